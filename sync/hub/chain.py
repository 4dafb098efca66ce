"""The hash chain of one terminal's records at the hub, for every hub store backend.

A terminal's journal is a hash chain: record ``seq`` carries ``prev``, the hash of record
``seq-1`` (:data:`~agent.journal.GENESIS` for seq 1), and its own hash is the SHA-256 of
its canonical body text. The hub acknowledges the *contiguous* seq: the highest seq such
that every record 1..seq is stored. :func:`advance_chain` moves it forward over a
batch's new records and over records stored earlier beyond a gap, checking each link
(:func:`chain_problems`); a broken link is reported and its record flagged, never
dropped, and the walk goes on from the claimed hash.

Backend-neutral: a store passes the batch's new records and a ``fetch`` function for
stored ones, and writes what comes back (new contiguous seq and hash, seqs to flag,
breaks) in its own SQL. Stored records are hashed the same way as incoming ones: SHA-256
of the canonical body text the hub stored (which is what :class:`IncomingRecord`'s
``computed_hash`` is over), so both backends decide every link alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GAP_CHUNK", "ChainAdvance", "IncomingRecord", "StoredRecords", "advance_chain",
           "apply_skip",
           "chain_problems", "split_duplicates", "text_hash"]

GAP_CHUNK = 1000
"""Stored records fetched per call while walking the chain past a batch."""

StoredRecords = Callable[[int, int], Iterable[tuple[int, str, str]]]
"""``fetch(lo, hi)``: the terminal's stored records with ``lo <= seq <= hi`` as
``(seq, claimed hash, canonical body text)``, in any order."""


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """One structurally valid record of a tx batch.

    ``canonical`` is the canonical body text the hub re-encoded, ``computed_hash`` its
    SHA-256; ``hash`` is what the terminal claims.
    """

    seq: int
    hash: str
    body: dict[str, Any]
    canonical: str
    computed_hash: str


@dataclass(slots=True)
class ChainAdvance:
    """What :func:`advance_chain` found: the new contiguous seq and the hash of that
    record, the seqs whose link is broken (to flag), and each problem as ``(seq, text)``."""

    contiguous_seq: int
    contiguous_hash: str
    flagged: list[int] = field(default_factory=list)
    breaks: list[tuple[int, str]] = field(default_factory=list)


def text_hash(canonical_text: str) -> str:
    """Hex SHA-256 of a canonical body text (how every record's own hash is computed)."""
    return hashlib.sha256(canonical_text.encode()).hexdigest()


def advance_chain(contiguous_seq: int, contiguous_hash: str,
                  new: Mapping[int, IncomingRecord], fetch: StoredRecords,
                  chunk: int = GAP_CHUNK) -> ChainAdvance:
    """Advance the contiguous seq from ``contiguous_seq`` (whose record hashes to
    ``contiguous_hash``) over ``new`` (this batch's records new to the store, by seq) and
    stored records (``fetch``, asked for ``chunk`` seqs at a time), verifying each link.
    Stops at the first seq that is neither new nor stored. Raises ``ValueError`` if a
    stored body is not JSON (the store itself is damaged)."""
    out = ChainAdvance(contiguous_seq, contiguous_hash)
    stored: dict[int, tuple[str, str]] = {}
    fetched_to = contiguous_seq
    while True:
        nxt = out.contiguous_seq + 1
        rec = new.get(nxt)
        if rec is not None:
            body, claimed, computed = rec.body, rec.hash, rec.computed_hash
        else:
            if nxt > fetched_to:
                fetched_to = nxt + chunk - 1
                stored.update((int(s), (str(h), str(t))) for s, h, t in fetch(nxt, fetched_to))
            row = stored.get(nxt)
            if row is None:
                break
            claimed, text = row
            body, computed = json.loads(text), text_hash(text)
        problems = chain_problems(nxt, body, claimed, computed, out.contiguous_hash)
        if problems:
            out.flagged.append(nxt)
            out.breaks += [(nxt, p) for p in problems]
        out.contiguous_seq, out.contiguous_hash = nxt, claimed
    return out


def apply_skip(contiguous_seq: int, contiguous_hash: str, skip: tuple[int, int] | None,
               records: Sequence[IncomingRecord]) -> tuple[int, str, list[tuple[int, str]]]:
    """Move the contiguous seq past records a terminal declared (signed) lost at the hub
    and no longer held: when the chain stops right before ``skip``'s first seq, it
    continues from ``skip``'s last with the hash the batch's first record names as its
    ``prev``. Returns the new ``(seq, hash)`` and the break to record (none if the skip
    does not apply)."""
    if skip is None or not records or contiguous_seq != skip[0] - 1:
        return contiguous_seq, contiguous_hash, []
    prev = records[0].body.get("prev")
    if records[0].seq != skip[1] + 1 or not isinstance(prev, str):
        return contiguous_seq, contiguous_hash, []
    return skip[1], prev, [(skip[0], f"records {skip[0]}..{skip[1]} lost at the hub and no "
                                     "longer held by the terminal (its signed statement)")]


def chain_problems(seq: int, body: dict[str, Any], claimed: str, computed: str,
                   prev_hash: str) -> list[str]:
    """What is wrong with record ``seq`` given the hash of record ``seq-1`` (``prev_hash``,
    :data:`~agent.journal.GENESIS` for seq 1). Empty when the link verifies."""
    problems = []
    if body.get("seq") != seq:
        problems.append("body seq differs from record seq")
    if body.get("prev") != prev_hash:
        problems.append(f"prev does not match the hash of seq {seq - 1}")
    if computed != claimed:
        problems.append("hash does not match body")
    return problems


def split_duplicates(records: Sequence[IncomingRecord], existing: dict[int, str]
                     ) -> tuple[dict[int, IncomingRecord], int, list[tuple[int, str]]]:
    """Split a batch into records new to the store (first copy of each seq wins),
    a duplicate count, and chain breaks for duplicates whose hash differs from the copy
    already stored (``existing``: seq → hash) or earlier in the batch."""
    new: dict[int, IncomingRecord] = {}
    duplicates = 0
    breaks: list[tuple[int, str]] = []
    for r in records:
        old = existing.get(r.seq)
        if old is None and r.seq not in new:
            new[r.seq] = r
            continue
        duplicates += 1
        other = old if old is not None else new[r.seq].hash
        if other != r.hash:
            breaks.append((r.seq, "conflicting duplicate: a different record with this "
                                  "seq was already stored (the first is kept)"))
    return new, duplicates, breaks
