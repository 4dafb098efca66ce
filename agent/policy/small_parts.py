"""The small parts of a policy bundle, checked: rule sets (their vectors run), issuer keys
and the settings part compiled into each rule set. The terminal's applier
(:mod:`agent.policy.apply`) and the hub's build (:mod:`sync.hub.policy_sources`) run the
same :func:`check_small_parts`, so a bundle the hub builds is one every terminal takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from agent.policy.errors import BundleRefused, Refusal
from agent.rules import RuleSet, RuleSetError, load_ruleset
from agent.tomlconf import ConfigFileError

if TYPE_CHECKING:
    from agent.codes.trust import IssuerKey

__all__ = ["SmallParts", "apply_settings", "check_small_parts"]


class SmallParts(NamedTuple):
    """The checked small parts of a bundle."""

    rulesets: dict[str, RuleSet]
    keys: tuple[list[IssuerKey], str] | None
    issuers: bytes | None
    settings: dict[str, Any]


def check_small_parts(rules: Mapping[str, bytes], issuers: bytes | None,
                       settings: bytes | None) -> SmallParts:
    """Parse and check the rule sets (their vectors run), issuer keys and settings.
    Raises :class:`BundleRefused` (``vectors_failed``, ``mix_and_match``, ``malformed``)."""
    rulesets: dict[str, RuleSet] = {}
    for profile, raw in rules.items():
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BundleRefused(Refusal.MALFORMED, f"rules/{profile}: not UTF-8: {err}"
                                ) from None
        try:
            rs = load_ruleset(f"policy:rules/{profile}", text=text)
        except (RuleSetError, ConfigFileError) as err:
            raise BundleRefused(Refusal.VECTORS_FAILED, str(err)[:500]) from None
        if rs.profile.name != profile:
            raise BundleRefused(Refusal.MIX_AND_MATCH,
                                f"rules/{profile} holds profile {rs.profile.name!r}")
        rulesets[profile] = rs
    keys = None
    if issuers is not None:
        from agent.codes.trust import TrustStoreError, parse_trust_document
        try:
            keys = parse_trust_document(json.loads(issuers), source="policy:issuers")
        except (TrustStoreError, ValueError) as err:
            raise BundleRefused(Refusal.MALFORMED, f"issuers: {err}") from None
        except RecursionError:
            raise BundleRefused(Refusal.MALFORMED, "issuers: nested too deep") from None
    doc: dict[str, Any] = {}
    if settings is not None:
        try:
            parsed = json.loads(settings)
            if not isinstance(parsed, dict):
                raise ValueError("not an object")
            doc = parsed
        except ValueError as err:
            raise BundleRefused(Refusal.MALFORMED, f"settings: {err}") from None
        except RecursionError:
            raise BundleRefused(Refusal.MALFORMED, "settings: nested too deep") from None
    apply_settings(rulesets, doc)
    return SmallParts(rulesets, keys, issuers, doc)


def apply_settings(rulesets: dict[str, RuleSet], doc: Mapping[str, Any]) -> None:
    """Compile each rule set with the settings part's overrides for its profile (their
    vectors run again). Raises :class:`BundleRefused` (``malformed``, ``vectors_failed``)."""
    from agent.policy.wiring import profile_settings
    for profile in doc:
        try:
            section = profile_settings(doc, profile)
        except ValueError as err:
            raise BundleRefused(Refusal.MALFORMED, f"settings: {err}") from None
        if not section:
            continue
        try:
            if profile in rulesets:
                rulesets[profile] = rulesets[profile].with_settings(section)
            else:       # the terminal's own rules: checked against the shipped profile
                from profiles import PROFILE_DIR
                shipped = PROFILE_DIR / f"{profile}.toml"
                if shipped.exists():
                    load_ruleset(shipped).with_settings(section)
        except RuleSetError as err:
            raise BundleRefused(Refusal.VECTORS_FAILED, str(err)[:500]) from None
