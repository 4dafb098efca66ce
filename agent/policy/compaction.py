"""Merging a delta's overlay into the store's big tables, in the background, yielding to taps.

:class:`Compactor` runs ``python -m agent.policy.stage --compact`` (niced, idle I/O
class) as a child process and controls it with signals: ``SIGSTOP`` the moment a tap
comes (:meth:`Compactor.activity`), ``SIGCONT`` once the terminal has been quiet for
``quiet_s`` seconds, ``SIGTERM`` (plus ``SIGCONT``, a stopped child must run to die) on
:meth:`Compactor.stop`. What it did is counted (:class:`CompactionCounters`) so that a
caller, or a test, can wait for a positive signal (:meth:`Compactor.wait_for`) instead
of for time to pass.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.policy.runners import relay_child_stderr, stage_command
from agent.store import PolicyStore

__all__ = ["CompactionCounters", "Compactor"]

log = logging.getLogger(__name__)

QUIET_CHECK_S = 0.05
"""How often (seconds) the resumer looks whether the terminal is quiet."""


@dataclass(frozen=True, slots=True)
class CompactionCounters:
    """What a :class:`Compactor` has done since it was made (counts, never reset)."""

    started: int = 0        # merge children started
    finished: int = 0       # merge children ended (merged all, failed or stopped)
    batches: int = 0        # merged batches the children reported (each one committed)
    pauses: int = 0         # SIGSTOPs sent (a tap came)
    resumes: int = 0        # SIGCONTs sent because the terminal was quiet
    quiet_checks: int = 0   # times the resumer looked whether the terminal was quiet


class Compactor:
    """Merges the store's delta overlay into its big tables in the background, in a child
    process (``python -m agent.policy.stage --compact``, niced, idle I/O class), paced,
    and only while the terminal is quiet.

    Each merged batch leaves the decisions unchanged, so the daemon's reader (not held
    between applies, see :meth:`PolicyStore.hold`) may read any of them, and each batch
    is checkpointed as it goes, in 32 KiB pieces (:func:`agent.policy.stage.merge_overlay`).
    The merge still writes hundreds of MB for a
    100k-row delta on a 10M-row store, so the daemon reports each presentation
    (:meth:`activity`): the child is stopped (``SIGSTOP``) at once and continued
    (``SIGCONT``) once no tap has come for ``quiet_s`` seconds (measured with ``clock``,
    monotonic seconds). Under steady taps the merge waits; the overlay answers lookups
    meanwhile. :meth:`stop` (before the next apply, and at shutdown) ends the child: a
    batch in progress is rolled back, nothing is lost, and :meth:`start` later resumes
    where it stopped.
    """

    def __init__(self, store: PolicyStore, python: str = sys.executable,
                 quiet_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 allowed: Callable[[], bool] = lambda: True,
                 batch_rows: int | None = None) -> None:
        self.store = store
        self.batch_rows = batch_rows
        """Overlay rows per merge transaction (None: the store's default, 500)."""
        self.allowed = allowed
        """Whether the merge may run now at all (outside the busy hours:
        :meth:`agent.policy.schedule.MaintenanceSchedule.merge_allowed`); while it says no,
        the child stays stopped as during taps."""
        self.python = python
        self.quiet_s = quiet_s
        self.clock = clock
        self._proc: subprocess.Popen[str] | None = None
        self._stderr = Path(f"{store.path}.compact.err")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_activity = -1e9       # clock() of the last presentation
        self._paused = False
        self._done = threading.Event()
        self._changed = threading.Condition()
        self._counters = CompactionCounters()
        self.merged = 0
        """Rows merged by the last (or current) run."""

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def paused(self) -> bool:
        """True while the merge child is stopped for taps."""
        return self._paused

    @property
    def pid(self) -> int | None:
        """The merge child's process id while one runs (or ran last), else None."""
        proc = self._proc
        return None if proc is None else proc.pid

    def counters(self) -> CompactionCounters:
        """A snapshot of what this compactor has done."""
        return self._counters

    def wait_for(self, predicate: Callable[[CompactionCounters], bool],
                 timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds until ``predicate(counters)`` holds; return
        whether it does."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._counters), timeout_s)

    def _count(self, **steps: int) -> None:
        with self._changed:
            c = self._counters
            self._counters = replace(c, **{f: getattr(c, f) + n for f, n in steps.items()})
            self._changed.notify_all()

    def activity(self) -> None:
        """A presentation arrived: pause a running merge until the terminal is quiet.
        Cheap (one signal at most), never waits for a merge being started or stopped: if
        :meth:`start`, :meth:`stop` or the resumer holds the lock, each of them sees the
        new time stamp and pauses or does not resume (and :meth:`stop` ends the child
        anyway). Safe from any thread."""
        self._last_activity = self.clock()
        if self._proc is not None and not self._paused and self._lock.acquire(blocking=False):
            try:
                self._pause()
            finally:
                self._lock.release()

    def _signal(self, sig: int, paused: bool) -> bool:
        """Send ``sig`` to a live child and note whether it is now paused; True if sent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            return False
        self._paused = paused
        return True

    def _pause(self) -> None:
        if self._signal(signal.SIGSTOP, paused=True):
            self._count(pauses=1)

    def start(self) -> bool:
        """Start merging if the overlay holds rows and no merge runs; True if started."""
        with self._lock:
            if self.running or self.store.overlay_rows() == 0:
                return False
            self.merged = 0
            self._paused = False
            self._done.clear()
            self._stderr = Path(f"{self.store.path}.compact.err")
            with open(self._stderr, "w") as err:   # read back when the child ends
                self._proc = subprocess.Popen(
                    stage_command(self.store.path, self.python, compact=True,
                                  batch_rows=self.batch_rows),
                    stdout=subprocess.PIPE, stderr=err, text=True)
            self._count(started=1)
            if self.clock() - self._last_activity < self.quiet_s or not self.allowed():
                self._pause()
            self._thread = threading.Thread(target=self._follow, args=(self._proc,),
                                            name="policy-compact", daemon=True)
            self._thread.start()
            threading.Thread(target=self._resume_when_quiet, name="policy-compact-quiet",
                             daemon=True).start()
            return True

    def _resume_when_quiet(self) -> None:
        """Every :data:`QUIET_CHECK_S`: continue a paused merge once quiet; pause a running
        one that an :meth:`activity` could not pause (it never waits for the lock)."""
        while not self._done.wait(QUIET_CHECK_S):
            with self._lock:
                quiet = (self.clock() - self._last_activity >= self.quiet_s
                         and self.allowed())
                if self._paused and quiet:
                    if self._signal(signal.SIGCONT, paused=False):
                        self._count(resumes=1)
                elif not self._paused and not quiet:
                    self._pause()
            self._count(quiet_checks=1)

    def _follow(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        last: dict[str, Any] = {}
        for line in proc.stdout:
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(last, dict) and "rows" in last:
                self.merged = int(last["rows"])
                if last.get("phase") == "compacted":
                    self._count(batches=1)
        proc.stdout.close()
        proc.wait()
        try:
            relay_child_stderr(self._stderr.read_text(errors="replace"), "policy merge child")
            self._stderr.unlink(missing_ok=True)
        except OSError as err:
            log.warning("cannot read the merge child's errors: %s", err)
        self._done.set()
        self._paused = False
        if proc.returncode == 0:
            log.info("policy overlay merged: %d rows", self.merged)
        elif proc.returncode > 0:
            log.warning("merging the policy overlay failed (%s); retried after the next "
                        "apply or restart", last.get("detail", f"exit {proc.returncode}"))
        self._count(finished=1)

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the current run to end; True if none runs."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return not self.running

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop a running merge and wait for it (the current batch is rolled back);
        ``SIGKILL`` if it has not ended ``timeout_s`` seconds after ``SIGTERM``."""
        with self._lock:
            proc, thread = self._proc, self._thread
            if proc is not None and proc.poll() is None:
                proc.terminate()
                self._signal(signal.SIGCONT, paused=False)   # a stopped child must run to die
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if thread is not None:
                thread.join(timeout_s)
            self._done.set()
            self._proc = self._thread = None
