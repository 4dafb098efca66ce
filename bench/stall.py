"""Where a slow tap waits: the tapping thread's kernel stack, sampled while it is in flight.

A slow tap's report says how long it was off the CPU, not on what. :class:`StallSampler`
watches one thread from another: once a tap has been in flight ``after_ms``, it reads
the tapping thread's kernel stack (``/proc/self/task/TID/stack``, readable by root only;
without it the sampler reports nothing) every ``every_s`` and counts each distinct
stack. A stack names the system call (``__x64_sys_pread64``, ``__x64_sys_futex`` — a
lock, the interpreter's included) and what the kernel waits in
(``jbd2_log_wait_commit``, ``folio_wait_writeback``…; the scheduler's own frames, which
every wait shares, are left out); an empty stack means the thread was running in user
space, or runnable.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

__all__ = ["StallSampler"]

_SCHED = frozenset({"__schedule", "schedule", "schedule_timeout", "schedule_hrtimeout_range",
                    "schedule_hrtimeout_range_clock", "io_schedule", "do_syscall_64",
                    "entry_SYSCALL_64_after_hwframe"})
"""Frames every wait shares; left out of a stack's signature."""

_FRAME = re.compile(r"\]\s+([\w.]+)\+")


def _signature(stack: str, depth: int) -> str:
    """``depth`` innermost frames of a kernel stack that say what it waits in, outermost
    last, joined by ``<`` ("" for an empty stack: running, or runnable)."""
    names = [m.group(1) for m in map(_FRAME.search, stack.splitlines()) if m]
    return "<".join([n for n in names if n not in _SCHED][:depth])


class StallSampler:
    """Samples thread ``tid``'s kernel stack while a tap is in flight for longer than
    ``after_ms`` (milliseconds), every ``every_s`` seconds; :meth:`end` returns what it
    saw. Costs the tapping thread two attribute writes a tap; the sampling thread sleeps
    otherwise."""

    def __init__(self, tid: int, after_ms: float = 20.0, every_s: float = 0.005,
                 depth: int = 6) -> None:
        self._path = Path(f"/proc/self/task/{tid}/stack")
        self.after_s, self.every_s, self.depth = after_ms / 1000, every_s, depth
        self.available = self._read() is not None
        self._since = 0.0                 # perf_counter() of the tap in flight; 0: none
        self._seen: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-sampler", daemon=True)
        if self.available:
            self._thread.start()

    def _read(self) -> str | None:
        try:
            return self._path.read_text()
        except OSError:
            return None

    def begin(self) -> None:
        """A tap starts (call from the tapping thread)."""
        self._seen = Counter()
        self._since = time.perf_counter()

    def end(self) -> dict[str, int]:
        """The tap ended: each distinct stack signature seen while it was slow, with how
        many samples showed it (``"running"``: an empty stack)."""
        self._since = 0.0
        return {k or "running": n for k, n in self._seen.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            since = self._since
            if since and time.perf_counter() - since > self.after_s:
                stack = self._read()
                if stack is not None and self._since == since:
                    self._seen[_signature(stack, self.depth)] += 1

    def close(self) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()
