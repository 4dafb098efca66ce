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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigurationError
from agent.pseudonym import Pseudonymizer

__all__ = ["BundleSources", "SourceError", "entitlement_rows", "hotlist_rows", "records"]

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


def entitlement_rows(path: Path, pseudo: Pseudonymizer) -> Iterator[EntRow]:
    """The entitlement rows of ``path``, identifiers hashed. Raises :class:`SourceError`."""
    for n, r in records(path):
        name = str(r.get("name") or r.get("category") or "").strip()
        if r.get("holder_key"):
            hk = str(r["holder_key"]).lower()
        elif r.get("ssn"):
            hk = pseudo.holder_key(str(r["ssn"]))
        else:
            raise SourceError(f"{path}:{n}: needs 'ssn' or 'holder_key'")
        if not name or "\t" in name:
            raise SourceError(f"{path}:{n}: needs a 'name' (entitlement) without tabs")
        yield (hk, name, str(r.get("valid_from") or ""), str(r.get("valid_until") or ""))


def hotlist_rows(path: Path, pseudo: Pseudonymizer) -> Iterator[HotRow]:
    """The hotlist rows of ``path``, identifiers hashed. Raises :class:`SourceError`."""
    for n, r in records(path):
        if r.get("card_id"):
            key, kind = pseudo.card_key(str(r["card_id"])), "card"
        elif r.get("ssn"):
            key, kind = pseudo.holder_key(str(r["ssn"])), "holder"
        elif r.get("key"):
            key, kind = str(r["key"]).lower(), str(r.get("kind") or "card")
        else:
            raise SourceError(f"{path}:{n}: needs 'card_id', 'ssn' or 'key'")
        yield (key, kind, str(r.get("reason") or "lost"), str(r.get("listed") or ""))
