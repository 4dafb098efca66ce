"""The journal record format: canonical encoding, hash chain, RFC 3339 times.

Shared by the terminal's journal, the hub (which re-verifies every chain) and every
reader of an export; ``docs/protocol.md`` §1 is the specification, and its worked example
is recomputed from this module by the tests. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.model import JournalRecord

__all__ = ["GENESIS", "ChainBreak", "canonical", "parse_utc", "record_hash", "utc_stamp",
           "verify_chain"]

GENESIS = "0" * 64
"""The ``prev`` of record 1."""

def canonical(body: Mapping[str, Any]) -> bytes:
    """Canonical encoding of a record body: UTF-8 JSON, keys sorted, no spaces, no floats.

    Raises ``ValueError`` if the body holds a float (floats have no single canonical text).
    """
    _reject_floats(body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(body: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical` of ``body`` (which includes ``prev``)."""
    return hashlib.sha256(canonical(body)).hexdigest()


def utc_stamp(epoch: float) -> str:
    """RFC 3339 UTC time with milliseconds, e.g. ``2026-11-25T02:00:00.123Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def parse_utc(stamp: str) -> float:
    """Epoch seconds of an RFC 3339 stamp with ``Z`` or a UTC offset
    (``2026-11-25T08:00:00Z``, ``…T16:00:00.123+08:00``). Raises ``ValueError`` for
    anything else, including a stamp without an offset."""
    if not isinstance(stamp, str):
        raise ValueError(f"time {stamp!r} is not a string")
    dt = datetime.fromisoformat(stamp[:-1] + "+00:00" if stamp.endswith(("Z", "z")) else stamp)
    if dt.tzinfo is None:
        raise ValueError(f"time {stamp!r} has no UTC offset")
    return dt.timestamp()


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError(f"floats are not allowed in journal records: {value!r}")
    if isinstance(value, Mapping):
        for v in value.values():
            _reject_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_floats(v)


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where a chain fails to verify: ``seq`` and what is wrong there."""

    seq: int
    problem: str


def verify_chain(records: Iterator[JournalRecord] | list[JournalRecord],
                 prev: str = GENESIS, first_seq: int = 1) -> list[ChainBreak]:
    """Check hashes, ``prev`` links and gapless ``seq`` of consecutive records.

    ``prev``/``first_seq`` say where the checked range starts (after a prune, the hash of
    the record before it). Returns the breaks found (empty when the chain verifies).
    """
    breaks: list[ChainBreak] = []
    expected_seq = first_seq
    for rec in records:
        if rec.seq != expected_seq:
            breaks.append(ChainBreak(rec.seq, f"gap: expected seq {expected_seq}"))
        if rec.body.get("seq") != rec.seq:
            breaks.append(ChainBreak(rec.seq, "body seq differs from record seq"))
        if rec.body.get("prev") != prev:
            breaks.append(ChainBreak(rec.seq, "prev does not match the previous hash"))
        if record_hash(rec.body) != rec.hash:
            breaks.append(ChainBreak(rec.seq, "hash does not match body"))
        prev = rec.hash
        expected_seq = rec.seq + 1
    return breaks
