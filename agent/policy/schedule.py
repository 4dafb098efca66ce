"""When a policy's bulk writes may run: busy hours, quiet windows, the expiry deadline.

On SD-card or eMMC storage a snapshot's bulk write (hundreds of MB into a new store
generation) and an overlay merge share one small device queue with the taps' journal
``fsync`` (docs/decisions.md §32). A delta is small and applies at once (a hotlist
delta must reach every terminal in seconds); the bulk writes are scheduled here:

* **Busy hours** (``[maintenance] busy_hours``, e.g. ``["06:00-22:00"]``, the profile's
  local time judged by the decision time base, never a raw wall clock): a snapshot does
  not *start* inside them — :meth:`MaintenanceSchedule.check_snapshot` raises
  :class:`~agent.policy.errors.SnapshotDeferred` with the seconds until they end, and
  the downlink retries then (or at once when a newer manifest comes). The overlay merge
  is paused inside them (:meth:`merge_allowed`).
* **Quiet windows**: a running snapshot child, like the merge child
  (:class:`~agent.policy.compaction.Compactor`), is stopped (``SIGSTOP``) the moment a
  tap comes and continued once no tap has come for ``quiet_s`` seconds
  (:meth:`watch`, a :class:`~agent.policy.runners.SubprocessRunner` watcher).
* **Deadline**: none of this defers a snapshot on a terminal that has no policy yet, nor
  past ``expiry_margin_s`` seconds before the applied policy expires: from then on the
  snapshot starts at once and runs without yielding, busy or not.

Times: ``now()`` is the decision time (epoch seconds, :class:`agent.timebase.TimeBase`),
``mono()`` monotonic seconds for the quiet windows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from agent.journal import parse_utc
from agent.policy.compaction import Compactor
from agent.policy.errors import SnapshotDeferred
from agent.policy.runners import SubprocessRunner, Watcher
from agent.store import PolicyInfo, PolicyStore


class MaintenanceSettings(Protocol):
    """What :func:`scheduled_apply` reads of the ``[maintenance]`` config section
    (:class:`agent.config.MaintenanceSection`; the policy package never imports the
    config, which knows the drivers)."""

    busy_hours: list[str]
    quiet_s: float
    expiry_margin_s: float
    snapshot_rows_per_s: int
    merge_batch_rows: int

__all__ = ["BusyHours", "MaintenanceSchedule", "MaintenanceSettings", "parse_span",
           "scheduled_apply"]

log = logging.getLogger(__name__)

_SPAN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")
DAY_MIN = 24 * 60
WATCH_S = 0.02
"""How often (seconds) a watched child is looked at (stop on a tap, continue when quiet)."""
DELTA_HOLD_S = 0.25
DELTA_RUN_S = 0.1
"""A delta child is stopped for a tap at most ``DELTA_HOLD_S`` seconds at a time; held
that long, it then runs at least ``DELTA_RUN_S`` (a flood of taps slows it, never stops
it)."""


def parse_span(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` → (start, end) minutes of the day; an end before the start wraps
    past midnight (``"22:00-06:00"``), ``24:00`` is the end of the day. Raises
    ``ValueError`` with what is wrong."""
    m = _SPAN.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM (24-hour local time, e.g. 06:30-21:00)")
    a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if b > DAY_MIN:
        raise ValueError(f"{text!r}: 24:00 is the latest end")
    if a == b % DAY_MIN:
        raise ValueError(f"{text!r} is empty or the whole day: give a real span")
    return a, b


@dataclass(frozen=True)
class BusyHours:
    """Spans of the day (minutes, local time) in which no bulk write starts."""

    spans: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, texts: Sequence[str]) -> BusyHours:
        """From ``"HH:MM-HH:MM"`` strings (:func:`parse_span`); raises ``ValueError`` also
        when together they cover the whole day (a snapshot would only ever run at the
        expiry deadline)."""
        hours = cls(tuple(parse_span(t) for t in texts))
        if hours.spans and all(hours.busy(m) for m in range(DAY_MIN)):
            raise ValueError("busy_hours cover the whole day: leave a window for snapshots")
        return hours

    def busy(self, minute: int) -> bool:
        """True if ``minute`` of the day (0–1439) falls in a span."""
        for a, b in self.spans:
            if (a <= minute < b) if a < b else (minute >= a or minute < b % DAY_MIN):
                return True
        return False

    def minutes_left(self, minute: int) -> int:
        """Whole minutes from ``minute`` until the first minute that is not busy (0 if
        ``minute`` is not busy)."""
        n = 0
        while n < DAY_MIN and self.busy((minute + n) % DAY_MIN):
            n += 1
        return n


class MaintenanceSchedule:
    """Decides when a snapshot starts and whether bulk writers may run now (module doc).

    ``busy`` are the busy hours in ``timezone``; ``now`` the decision time and ``mono``
    a monotonic clock (both seconds); ``quiet_s`` the seconds without a tap before a
    snapshot or merge child runs on; ``expiry_margin_s`` how long before the applied
    policy's expiry a snapshot is no longer deferred nor paused.
    """

    def __init__(self, *, busy: BusyHours = BusyHours(), timezone: str = "Asia/Shanghai",
                 now: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic, quiet_s: float = 2.0,
                 expiry_margin_s: float = 3600.0) -> None:
        self.busy = busy
        self.tz = ZoneInfo(timezone)
        self.now = now
        self.mono = mono
        self.quiet_s = quiet_s
        self.expiry_margin_s = expiry_margin_s
        self._last_tap = -1e18
        self.deferred = 0
        """Snapshots deferred because of busy hours (counted)."""
        self.pauses = 0
        """Times a watched (snapshot or delta) child was stopped."""
        self._taps: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._child: tuple[subprocess.Popen[str]] | None = None   # the watched child
        self._have: PolicyInfo | None = None                       # ... its policy in force
        self._stopped = False
        self._stopped_at = 0.0
        self._mode = ""                # the watched child's: snapshot | delta
        self._in_flight = 0            # presentations reported and not yet decided
        self._run_until = -1e18        # a delta child held too long runs until then

    def on_tap(self, fn: Callable[[], None]) -> None:
        """Also call ``fn()`` on each :meth:`activity` (the merge's compactor)."""
        self._taps.append(fn)

    def activity(self) -> None:
        """A presentation arrived (cheap; from any thread). Stops a watched snapshot child
        until quiet, a delta child until :meth:`tap_done`."""
        self._last_tap = self.mono()
        self._in_flight += 1
        for fn in self._taps:
            fn()
        have = self._have
        if (self._child is not None and not self._stopped and have is not None
                and self._lock.acquire(blocking=False)):
            try:              # never waits: the watcher sees the time stamp anyway
                if self._hold(have):
                    self._send(signal.SIGSTOP, True)
            finally:
                self._lock.release()

    def tap_done(self) -> None:
        """The presentation reported last has been decided and journaled: a delta child
        stopped for it goes on (once no other tap is in flight)."""
        self._in_flight = max(0, self._in_flight - 1)
        have = self._have
        if (self._mode == "delta" and self._stopped and have is not None
                and self._lock.acquire(blocking=False)):
            try:
                if not self._hold(have):
                    self._send(signal.SIGCONT, False)
            finally:
                self._lock.release()

    @property
    def child_state(self) -> str:
        """The watched child: ``"none"``, ``"stopped"`` or ``"running"`` (for reports)."""
        if self._child is None:
            return "none"
        return "stopped" if self._stopped else "running"

    @property
    def in_flight(self) -> int:
        """Presentations reported by :meth:`activity` and not yet by :meth:`tap_done`."""
        return self._in_flight

    def quiet(self) -> bool:
        """True when no tap has come for ``quiet_s`` seconds."""
        return self.mono() - self._last_tap >= self.quiet_s

    def _minute(self) -> int:
        local = datetime.fromtimestamp(self.now(), self.tz)
        return local.hour * 60 + local.minute

    def busy_now(self) -> bool:
        """True inside the configured busy hours (decision time, profile timezone)."""
        return self.busy.busy(self._minute())

    def merge_allowed(self) -> bool:
        """Whether the overlay merge may run now (outside the busy hours)."""
        return not self.busy_now()

    def _seconds_to_deadline(self, have: PolicyInfo) -> float | None:
        """Seconds until ``expiry_margin_s`` before ``have`` expires (None: no deadline,
        i.e. no policy yet or no expiry — then nothing is deferred nor paused)."""
        if not have.channel or have.version <= 0 or not have.expires:
            return None
        try:
            expires = parse_utc(have.expires)
        except ValueError:
            return None
        return expires - self.expiry_margin_s - self.now()

    def must_run(self, have: PolicyInfo) -> bool:
        """True when a snapshot must run now without yielding: no policy yet, or the
        applied one is within ``expiry_margin_s`` of its expiry."""
        left = self._seconds_to_deadline(have)
        return left is None or left <= 0

    def check_snapshot(self, have: PolicyInfo, label: str = "") -> None:
        """Before a snapshot's parts are fetched and written: raise
        :class:`SnapshotDeferred` (``retry_after_s``: when the busy hours end, or the
        deadline if earlier) inside the busy hours, unless :meth:`must_run`."""
        if self.must_run(have) or not self.busy_now():
            return
        left = self._seconds_to_deadline(have) or 0.0
        local = datetime.fromtimestamp(self.now(), self.tz)
        to_free = self.busy.minutes_left(self._minute()) * 60 - local.second
        retry = max(1.0, min(float(to_free), left))
        self.deferred += 1
        raise SnapshotDeferred(retry, f"snapshot {label} waits for the end of the busy "
                               f"hours ({retry:.0f} s; {have.label} stays in force)")

    def _hold(self, have: PolicyInfo) -> bool:
        """Whether the watched child should be stopped now. A snapshot: while not quiet or
        busy (unless :meth:`must_run`). A delta: only while a tap is in flight, and never
        for more than :data:`DELTA_HOLD_S` at a time (then it runs :data:`DELTA_RUN_S`):
        it always progresses, a hotlist change lands in seconds."""
        if self._mode == "delta":
            now = self.mono()
            if now < self._run_until:
                return False
            if self._stopped and now - self._stopped_at > DELTA_HOLD_S:
                self._run_until = now + DELTA_RUN_S
                return False
            return self._in_flight > 0 and now - self._last_tap < DELTA_HOLD_S
        return not self.must_run(have) and (not self.quiet() or self.busy_now())

    def _send(self, sig: int, stopped: bool) -> None:
        """Signal the watched child (if it still runs) and note whether it is stopped."""
        child = self._child
        if child is not None and child[0].poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0].pid, sig)
                self._stopped = stopped
                if stopped:
                    self.pauses += 1
                    self._stopped_at = self.mono()

    def watcher(self, policy: Callable[[], PolicyInfo]) -> Watcher:
        """A :class:`~agent.policy.runners.SubprocessRunner` watcher judging by the policy
        in force ``policy()`` (the store's, until the switch)."""
        return lambda proc, mode: self.watch(proc, mode, policy())

    @contextlib.contextmanager
    def watch(self, proc: subprocess.Popen[str], mode: str, have: PolicyInfo
              ) -> Iterator[Callable[[], bool]]:
        """While a snapshot child ``proc`` runs: stop it the moment a tap comes (from
        :meth:`activity`) or busy hours begin, continue it once quiet — unless
        :meth:`must_run`. A delta child is stopped only while a tap is being decided
        (:meth:`tap_done`), at most :data:`DELTA_HOLD_S` at a time. Yields a function
        telling whether the child is stopped now; the child is continued on exit."""
        done = threading.Event()
        with self._lock:
            self._child, self._stopped, self._have = (proc,), False, have
            self._mode = "delta" if mode == "delta" else "snapshot"

        def loop() -> None:
            while not done.wait(WATCH_S):
                with self._lock:
                    hold = self._hold(have)
                    if hold and not self._stopped:
                        self._send(signal.SIGSTOP, True)
                    elif not hold and self._stopped:
                        self._send(signal.SIGCONT, False)

        with self._lock:
            if self._hold(have):
                self._send(signal.SIGSTOP, True)
        thread = threading.Thread(target=loop, name="policy-snapshot-yield", daemon=True)
        thread.start()
        try:
            yield lambda: self._stopped
        finally:
            done.set()
            thread.join()
            with self._lock:
                self._send(signal.SIGCONT, False)
                self._child = self._have = None
                self._mode = ""


def scheduled_apply(cfg: MaintenanceSettings, store: PolicyStore, timezone: str, *,
                    now: Callable[[], float], mono: Callable[[], float] = time.monotonic
                    ) -> tuple[MaintenanceSchedule, SubprocessRunner, Compactor]:
    """The daemon's schedule (from the ``[maintenance]`` config section), the apply runner
    whose snapshot child yields to taps, and the overlay compactor that keeps out of the
    busy hours — the three things a :class:`~agent.policy.apply.PolicyApplier` takes.
    Report each presentation to :meth:`MaintenanceSchedule.activity` (it tells the
    compactor too)."""
    schedule = MaintenanceSchedule(busy=BusyHours.parse(cfg.busy_hours), timezone=timezone,
                                   now=now, mono=mono, quiet_s=cfg.quiet_s,
                                   expiry_margin_s=cfg.expiry_margin_s)
    compactor = Compactor(store, quiet_s=cfg.quiet_s, clock=mono,
                          allowed=schedule.merge_allowed, batch_rows=cfg.merge_batch_rows)
    schedule.on_tap(lambda: compactor.activity())    # looked up per tap
    runner = SubprocessRunner(watcher=schedule.watcher(lambda: store.info),
                              snapshot_rows_per_s=cfg.snapshot_rows_per_s)
    return schedule, runner, compactor
