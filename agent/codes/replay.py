"""Replay cache: remembers codes already accepted until they would be refused as expired.

A code is identified by its content (certificate id, issued-at, nonce), not by its
signature bytes, since an ECDSA signature can be altered into another valid one. Each
entry is kept until the code's own expiry (its issued-at plus the backward window), after
which the time check refuses it anyway, so memory is bounded by the codes seen within one
window.

A hard cap (``max_entries``) bounds memory when more codes than that are accepted within
one window. Reaching it drops the soonest-expiring entries, and the cache then cannot
tell whether a code expiring no later than a dropped entry was seen: until that expiry
has passed, such a code is refused (:attr:`ReplayVerdict.CACHE_FULL`). A full cache may
so refuse a genuine, older code (the rider shows the phone's next code); it never accepts
a code twice.
"""

from __future__ import annotations

import enum
import heapq
import logging
import threading
from collections.abc import Iterable

__all__ = ["ReplayCache", "ReplayVerdict"]

log = logging.getLogger(__name__)


class ReplayVerdict(enum.Enum):
    """What the cache says of a code offered to :meth:`ReplayCache.record`."""

    NEW = "new"
    """Not seen before: recorded, accept it."""
    REPLAYED = "code_replayed"
    """Recorded before: a replay."""
    CACHE_FULL = "replay_cache_full"
    """Expires no later than an entry the full cache dropped: it may be that entry, so
    it is refused as a replay."""


class ReplayCache:
    """Thread-safe set of recently accepted code ids with per-entry expiry (epoch seconds).

    ``max_entries`` (≥ 1) is the hard cap; raises ``ValueError`` below 1.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._dropped_until = float("-inf")
        """The latest expiry (epoch s) of an entry dropped by the cap."""
        self._lock = threading.Lock()
        self.dropped = 0
        """Entries dropped by the cap since the start (each was still within its window)."""

    def record(self, code_id: bytes, expires_at: float, now: float) -> ReplayVerdict:
        """Record ``code_id`` until ``expires_at`` (epoch s) as seen at ``now``; the verdict
        says whether it is new, a replay, or undecidable because the cap dropped entries
        expiring as late as it (refuse both)."""
        with self._lock:
            self._purge(now)
            if code_id in self._expiry:
                return ReplayVerdict.REPLAYED
            if expires_at <= self._dropped_until:
                return ReplayVerdict.CACHE_FULL
            self._expiry[code_id] = expires_at
            heapq.heappush(self._heap, (expires_at, code_id))
            if len(self._expiry) > self._max:
                until, old = heapq.heappop(self._heap)
                self._expiry.pop(old, None)
                self._dropped_until = max(self._dropped_until, until)
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:   # not once per tap
                    log.warning("replay cache full (%d entries): %d dropped so far; codes "
                                "expiring before %.0f are refused", self._max, self.dropped,
                                until)
            return ReplayVerdict.NEW

    def seed(self, entries: Iterable[tuple[bytes, float]], now: float) -> int:
        """Remember codes accepted before a restart (``(code_id, expires_at)``, e.g. from
        the journal); entries already expired at ``now`` are skipped. Returns how many."""
        n = 0
        for code_id, expires_at in entries:
            if expires_at >= now and self.record(code_id, expires_at, now) is ReplayVerdict.NEW:
                n += 1
        return n

    def check_and_add(self, code_id: bytes, expires_at: float, now: float) -> bool:
        """True if ``code_id`` is new (and now recorded); False if it must be refused as a
        replay (:meth:`record` says why)."""
        return self.record(code_id, expires_at, now) is ReplayVerdict.NEW

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            _, cid = heapq.heappop(heap)
            self._expiry.pop(cid, None)
