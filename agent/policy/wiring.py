"""Connecting an applied policy to a running terminal: rules, settings and issuer keys.

The daemon builds a :class:`~agent.policy.apply.PolicyApplier` over its store, registers
:func:`engine_listener` on it, calls the listener once with
:meth:`~agent.policy.apply.PolicyApplier.current` at startup (so a restarted terminal
decides with the rules of the bundle it last applied), and starts a
:class:`sync.downlink.Downlink`. The store itself follows generation switches by
itself (:meth:`agent.store.PolicyStore.refresh`, called by the applier).

The bundle's ``settings`` part is a JSON object of profile name → overrides of that
profile's ``[settings]`` (``{"bus_validator": {"standard_fare": 250}}``): the terminal's
rules (the bundle's ``rules/<profile>``, else its own profile file) are compiled with
them, so a fare changes in the charged amount and the prompt together. Its ``calendar``
part (holidays, 调休) goes to the engine at the same switch
(:func:`agent.policy.calendar_part.apply_calendar`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from agent.policy.apply import AppliedPolicy, Listener
from agent.policy.calendar_part import apply_calendar
from agent.rules import RuleSet

__all__ = ["TrustStoreLike", "engine_listener", "profile_settings"]

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    def swap(self, *, ruleset: Any = None, verifier: Any = None, store: Any = None) -> None: ...


class TrustStoreLike(Protocol):
    """What is needed of :class:`agent.codes.trust.TrustStore`."""

    def replace(self, keys: Any, *, version: str = "") -> Any: ...


def profile_settings(doc: Mapping[str, Any], profile: str) -> dict[str, Any] | None:
    """The overrides for ``profile`` in a settings part, None if it names none.
    Raises ``ValueError`` if they are not a JSON object."""
    section = doc.get(profile)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f"settings for {profile!r} must be an object, not {section!r}")
    return section


def engine_listener(engine: EngineLike, profile: str, trust: TrustStoreLike | None = None,
                    base: RuleSet | None = None) -> Listener:
    """A listener that swaps the engine's rule set for the bundle's ``rules/<profile>``
    (else ``base``, the terminal's own) compiled with the bundle's settings for
    ``profile``, and replaces the trusted issuer keys (if the bundle has some).

    Rules, settings and keys were parsed and checked by the applier before the switch;
    should the swap still fail here (settings that break the terminal's own profile),
    the error is logged and the previous rules/keys stay in force (it never raises).
    """
    state: dict[str, Any] = {"rules": base, "overridden": False}

    def on_applied(applied: AppliedPolicy) -> None:
        rs = applied.ruleset(profile)
        if rs is not None:
            state["rules"] = rs
        try:
            section = profile_settings(applied.settings, profile)
            target: RuleSet | None = state["rules"]
            if target is not None and (rs is not None or section or state["overridden"]):
                if section:
                    target = target.with_settings(section)
                engine.swap(ruleset=target)
                state["overridden"] = bool(section)
                log.info("rules of %s now from policy %s%s", profile, applied.info.label,
                         f" with settings {section}" if section else "")
        except Exception:
            log.exception("rules/%s of %s unusable; keeping the current rules", profile,
                          applied.info.label)
        apply_calendar(engine, applied)
        keys = applied.issuer_keys()
        if trust is not None and keys is not None:
            try:
                trust.replace(keys[0], version=keys[1] or applied.info.label)
            except Exception:
                log.exception("issuer keys of %s unusable; keeping the current keys",
                              applied.info.label)

    return on_applied
