"""What background work needs to know of the taps: is one in flight, when came the last.

:class:`TapWatch` is shared by the work that must never start inside a tap — the
journal's WAL checkpoints (:mod:`agent.journal_checkpoint`) and Python's full garbage
collections (:mod:`agent.gcquiet`). The daemon's tap hooks call :meth:`TapWatch.tap_started`
and :meth:`TapWatch.tap_done` around each presentation; a subclass's thread waits on
``_cond``, which :meth:`tap_done` notifies. Times are ``clock()`` seconds (monotonic).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TapWatch"]


class TapWatch:
    """Taps in flight and the time of the last one, under one condition variable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0          # taps reported and not yet decided
        self._last_tap = -1e18
        self._stop = False           # set (under _cond) to end the subclass's thread

    def tap_started(self) -> None:
        """A presentation arrived: the background work does not start until it is decided."""
        with self._cond:
            self._in_flight += 1
            self._last_tap = self.clock()

    def tap_done(self) -> None:
        """The presentation is decided and journaled (or dropped, or its decision failed)."""
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)
            self._last_tap = self.clock()
            self._cond.notify_all()

    def _due(self, wait_s: Callable[[], float | None]) -> bool:
        """With ``_cond`` held: wait until ``wait_s()`` (seconds still to wait, None: until
        notified) says 0 — True — or the watch is stopped — False."""
        while not self._stop:
            wait = wait_s()
            if wait == 0.0:
                return True
            self._cond.wait(wait)
        return False

    @property
    def busy(self) -> bool:
        """True while a tap is being decided."""
        return self._in_flight > 0
