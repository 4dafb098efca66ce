"""Replay cache: remembers codes already accepted until they would be refused as expired.

A code is identified by its content (certificate id, issued-at, nonce), not by its
signature bytes, since an ECDSA signature can be altered into another valid one. Each
entry is kept until the code's own expiry (its issued-at plus the backward window), after
which the time check refuses it anyway, so memory is bounded by the codes seen within one
window. A hard cap (``max_entries``) drops the soonest-expiring entries beyond it.
"""

from __future__ import annotations

import heapq
import logging
import threading

__all__ = ["ReplayCache"]

log = logging.getLogger(__name__)


class ReplayCache:
    """Thread-safe set of recently accepted code ids with per-entry expiry (epoch seconds)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def check_and_add(self, code_id: bytes, expires_at: float, now: float) -> bool:
        """Record ``code_id`` until ``expires_at``; False if it was already recorded (a replay)."""
        with self._lock:
            self._purge(now)
            if code_id in self._expiry:
                return False
            self._expiry[code_id] = expires_at
            heapq.heappush(self._heap, (expires_at, code_id))
            if len(self._expiry) > self._max:
                _, old = heapq.heappop(self._heap)
                self._expiry.pop(old, None)
                log.warning("replay cache full (%d entries): dropped the oldest", self._max)
            return True

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            _, cid = heapq.heappop(heap)
            self._expiry.pop(cid, None)
