"""Python's full garbage collections, kept out of taps (``docs/decisions.md`` 52).

CPython collects its oldest generation by itself, in whichever thread happens to allocate,
holding the interpreter lock: every thread waits, the tap being decided too. In the
storage bench one such collection (58,000 tracked objects) took **23.5 ms of CPU inside a
tap**, once every few tens of thousands of taps — the merge phases' lone slow taps of
decision 51 and of this stop's runs. :class:`QuietCollector` makes that collection the
daemon's choice:

* at start, :func:`gc.freeze` moves everything the start-up allocated (imports, settings,
  the rule set) to the permanent generation, which no collection walks again;
* the automatic collection of the oldest generation is switched off (its threshold set to
  :data:`NEVER`); the younger two stay automatic (small, bounded by their thresholds);
* a thread runs ``gc.collect()`` once no tap has come for ``quiet_s`` seconds and
  ``every_s`` have passed since the last one — or, on a terminal that is never quiet that
  long, after ``at_most_s`` at the first moment no tap is being decided.

The interpreter is shared by the whole process, so the settings are process-wide: the
first collector started installs them, the last one closed restores the thresholds and
unfreezes. Times are monotonic seconds.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

from agent.between_taps import TapWatch

__all__ = ["NEVER", "QuietCollector"]

log = logging.getLogger(__name__)

NEVER = 1 << 30
"""The oldest generation's threshold while a collector runs: never reached."""

_lock = threading.Lock()
_users = 0
_saved: tuple[int, int, int] | None = None


def _install() -> None:
    global _users, _saved
    with _lock:
        _users += 1
        if _users == 1:
            _saved = gc.get_threshold()
            gc.collect()           # what start-up left as garbage is not frozen with it
            gc.freeze()
            gc.set_threshold(_saved[0], _saved[1], NEVER)


def _uninstall() -> None:
    global _users, _saved
    with _lock:
        _users -= 1
        if _users == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            gc.unfreeze()
            _saved = None


class QuietCollector(TapWatch):
    """Runs Python's full garbage collection between taps. :meth:`tap_started` /
    :meth:`tap_done` bracket each presentation (the daemon's tap hooks); :meth:`start`
    installs the process-wide settings and the thread; :meth:`close` stops it (never
    raises). ``runs`` counts the collections it made; ``last_ms`` is the last one's length
    (ms) and ``last_end`` when it ended (the clock's seconds; until the first, when the
    collector started): the next is due ``every_s`` after it."""

    def __init__(self, *, quiet_s: float = 1.0, every_s: float = 60.0, at_most_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.quiet_s, self.every_s, self.at_most_s = quiet_s, every_s, at_most_s
        self.runs = 0
        self.last_ms = 0.0
        self.last_end = clock()           # reset by start(), as the last tap's time
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        _install()
        self._last_tap = self.last_end = self.clock()
        self._thread = threading.Thread(target=self._loop, name="gc-quiet", daemon=True)
        self._thread.start()

    def _wait_s(self) -> float | None:
        """0 when a collection may start now, else how long to wait (None: for a tap)."""
        if self._in_flight:
            return None
        now = self.clock()
        due = self.last_end + self.every_s
        if now >= self.last_end + self.at_most_s:
            return 0.0
        return max(0.0, due - now, self._last_tap + self.quiet_s - now)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._due(self._wait_s):
                    return
            t0 = time.perf_counter()
            found = gc.collect()
            took = (time.perf_counter() - t0) * 1000
            with self._cond:
                self.last_end = self.clock()
                self.last_ms = took
                self.runs += 1
                self._cond.notify_all()
            log.debug("full garbage collection between taps: %d objects freed in %.1f ms",
                      found, took)

    def wait_runs(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until ``n`` collections have run (tests). True if they did."""
        with self._cond:
            return self._cond.wait_for(lambda: self.runs >= n, timeout)

    def close(self) -> None:
        """Stop the thread (a collection under way finishes) and, if it was the last
        collector, restore the interpreter's thresholds and unfreeze."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            _uninstall()
