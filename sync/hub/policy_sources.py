"""Source files of a policy build: reading and checking entitlement and hotlist rows.

The operations side reads CSV (header row) or JSONL files keyed by raw 社会保障号码 or card
identifiers and hashes every identifier with the deployment's key on the way in
(:class:`agent.pseudonym.Pseudonymizer`): raw identifiers never leave this module. Every
refusal is a :class:`SourceError` naming the file, the line and the fix.

Source columns (CSV header or JSONL keys):

* entitlements: ``ssn`` (or an already hashed ``holder_key``), ``name`` (or ``category``),
  optional ``valid_from``, ``valid_until`` (ISO dates);
* hotlist: ``card_id`` (a card, kind ``card``) or ``ssn`` (a holder, kind ``holder``), or a
  hashed ``key`` with ``kind``; optional ``reason`` (default ``lost``), ``listed``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigurationError
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset

if TYPE_CHECKING:
    from agent.policy.manifest import PartRef

__all__ = ["BundleSources", "SourceError", "channel_categories", "check_bundle_parts",
           "check_card_id", "check_ssn", "entitlement_rows", "hotlist_rows", "key_fingerprint",
           "progress", "records"]

_SSN = re.compile(r"^[0-9]{17}[0-9X]$")
_CARD_ID = re.compile(r"^[0-9A-F]{32}$")
_HASHED = re.compile(r"^[0-9a-f]{32}$")
_GB11643_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_GB11643_CHECK = "10X98765432"

EntRow = tuple[str, str, str, str]
"""``(holder_key, name, valid_from, valid_until)``"""
HotRow = tuple[str, str, str, str]
"""``(key, kind, reason, listed)``"""


class SourceError(ConfigurationError):
    """A source file is unusable; the message names the file and line."""


@dataclass
class BundleSources:
    """Inputs of one build. ``None`` keeps that part as last published. With ``merge``
    the entitlement/hotlist files are additions to the last version instead of the full
    lists; ``remove_hotlist`` files list entries to drop (same columns)."""

    entitlements: Path | None = None
    hotlist: Path | None = None
    remove_hotlist: Path | None = None
    rules: list[Path] = field(default_factory=list)
    issuers: Path | None = None
    settings: Path | None = None
    merge: bool = False


def check_ssn(value: str) -> str:
    """The 18-character 社会保障号码 (公民身份号码, GB 11643) in canonical form (upper-case
    ``X``). Raises ``ValueError`` saying what is wrong (never echoing the number): not 18
    characters (an Excel-mangled ``3.70302E+17`` too), or a wrong check digit."""
    s = value.strip().upper()
    if "E+" in s or "." in s:
        raise ValueError("looks mangled by a spreadsheet (scientific notation): format the "
                         "column as text and export again")
    if not _SSN.match(s):
        raise ValueError(f"a 社会保障号码 has 18 characters (17 digits and a digit or X), "
                         f"got {len(s)}")
    want = _GB11643_CHECK[sum(int(c) * w for c, w in zip(s[:17], _GB11643_WEIGHTS, strict=True)) % 11]
    if s[17] != want:
        raise ValueError("the check digit (GB 11643) is wrong: a typing error in the number")
    return s


def check_card_id(value: str) -> str:
    """The card identification code (卡识别码, 16 bytes as 32 hex digits) in canonical
    upper case. Raises ``ValueError`` saying what is wrong."""
    s = value.strip().upper()
    if not _CARD_ID.match(s):
        raise ValueError(f"a card identification code (卡识别码) is 32 hex digits, got "
                         f"{len(s)} characters")
    return s


def _hashed(value: str, what: str) -> str:
    s = value.strip()
    if not _HASHED.match(s):
        raise ValueError(f"a hashed {what} is 32 lower-case hex digits (made with the "
                         "deployment key); give the raw identifier in its own column instead")
    return s


def channel_categories(rule_texts: list[tuple[str, str]]) -> frozenset[str] | None:
    """Every entitlement category the channel's rule files (``(source, TOML text)``) test
    (``when.entitled_any``), or None when the channel ships no rules (the terminals' own
    profiles decide then, and any name is taken). Raises ``RuleSetError``."""
    if not rule_texts:
        return None
    out: set[str] = set()
    for source, text in rule_texts:
        for rule in load_ruleset(source, text=text).spec.rule:
            out.update(rule.when.entitled_any or ())
    return frozenset(out)


def key_fingerprint(pseudonymizer: Pseudonymizer) -> str:
    """16 hex digits identifying a pseudonymisation key: a keyed hash (HMAC) of a fixed
    label, never the key. Two builds hashing with different keys differ here."""
    return pseudonymizer.key("fingerprint", "ykt pseudonym key fingerprint v1")[:16]


def check_bundle_parts(parts_dir: Path, parts: dict[str, PartRef],
                       settings_source: Path | None) -> None:
    """Check the rule and settings parts together exactly as a terminal will
    (:func:`agent.policy.apply.check_small_parts`: the settings compiled into each
    profile's rules, vectors run). Raises :class:`SourceError` naming the settings file."""
    from agent.policy.apply import check_small_parts
    from agent.policy.errors import BundleRefused

    def body(name: str) -> bytes | None:
        ref = parts.get(name)
        return None if ref is None else (parts_dir / ref.sha256).read_bytes()

    rules = {n.split("/", 1)[1]: (parts_dir / r.sha256).read_bytes()
             for n, r in parts.items() if r.kind == "rules"}
    try:
        check_small_parts(rules, None, body("settings"))
    except BundleRefused as err:
        where = settings_source or "the settings part"
        raise SourceError(f"{where}: terminals would refuse this bundle: {err}") from None




def progress(rows: Iterable[Any], path: Path, enabled: bool) -> Iterable[Any]:
    """``rows`` with a progress bar on stderr (tqdm) when ``enabled`` and stderr is a
    terminal; ``rows`` unchanged otherwise."""
    if not enabled or not sys.stderr.isatty():
        return rows
    from tqdm import tqdm
    bar: Iterable[Any] = tqdm(rows, desc=path.name, unit=" rows", unit_scale=True, file=sys.stderr,
                              mininterval=0.5, leave=False)
    return bar


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) from a CSV (header row) or JSONL file.
    Raises :class:`SourceError` for a line that is not a JSON object."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise SourceError(f"{path}:{n}: not JSON: {err.msg}") from None
                    if not isinstance(rec, dict):
                        raise SourceError(f"{path}:{n}: a JSON object per line is required")
                    yield n, rec
        return
    with open(path, encoding="utf-8-sig", newline="") as f:
        for n, rec in enumerate(csv.DictReader(f), 2):
            yield n, rec


def entitlement_rows(path: Path, pseudo: Pseudonymizer,
                     categories: frozenset[str] | None = None) -> Iterator[EntRow]:
    """The entitlement rows of ``path``, identifiers hashed. ``categories``, when given,
    are the only names allowed (those the channel's rules test). Raises
    :class:`SourceError` naming the file, line and fix."""
    for n, r in records(path):
        name = str(r.get("name") or r.get("category") or "").strip()
        try:
            if r.get("holder_key"):
                hk = _hashed(str(r["holder_key"]), "holder_key")
            elif r.get("ssn"):
                hk = pseudo.holder_key(check_ssn(str(r["ssn"])))
            else:
                raise ValueError("needs 'ssn' or 'holder_key'")
        except ValueError as err:
            raise SourceError(f"{path}:{n}: ssn: {err}") from None
        if not name or "\t" in name:
            raise SourceError(f"{path}:{n}: needs a 'name' (entitlement) without tabs")
        if categories is not None and name not in categories:
            known = ", ".join(sorted(categories)) or "none"
            raise SourceError(f"{path}:{n}: name: not a category the channel's rules use "
                              f"(known: {known}); a person's name or a typo? Put the "
                              "category in this column, or add a rule that tests it")
        yield (hk, name, str(r.get("valid_from") or ""), str(r.get("valid_until") or ""))


def hotlist_rows(path: Path, pseudo: Pseudonymizer) -> Iterator[HotRow]:
    """The hotlist rows of ``path``, identifiers hashed. Raises :class:`SourceError`."""
    for n, r in records(path):
        try:
            if r.get("card_id"):
                col = "card_id"
                key, kind = pseudo.card_key(check_card_id(str(r["card_id"]))), "card"
            elif r.get("ssn"):
                col = "ssn"
                key, kind = pseudo.holder_key(check_ssn(str(r["ssn"]))), "holder"
            elif r.get("key"):
                col = "key"
                key, kind = _hashed(str(r["key"]), "key"), str(r.get("kind") or "card")
            else:
                raise SourceError(f"{path}:{n}: needs 'card_id', 'ssn' or 'key'")
        except ValueError as err:
            raise SourceError(f"{path}:{n}: {col}: {err}") from None
        if kind not in ("card", "holder"):
            raise SourceError(f"{path}:{n}: kind: 'card' or 'holder', got {kind!r}")
        yield (key, kind, str(r.get("reason") or "lost"), str(r.get("listed") or ""))
