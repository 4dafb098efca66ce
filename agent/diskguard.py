"""A full disk, handled: the journal's reserve, out of service, and back by itself.

SD cards fill up (a log that grew, a hub that did not ack for weeks). When the journal
can no longer grow, every tap must still be told something, the terminal must go on
syncing (an ack lets it prune, which frees the space), and it must come back into service
by itself. Deleting rows needs room too (SQLite writes the deletion to the WAL first), so
the data directory keeps a **reserve**: a preallocated file of ``reserve_bytes``.

- The engine's first append that the disk refuses calls :meth:`DiskGuard.on_full`: the
  reserve is released (so that append, an ``out_of_service`` event and the prunes have
  room), the engine goes out of service: every later tap gets the failsafe prompt
  ("设备故障 请稍后") and nothing opens. One ERROR is logged, not one per tap.
- While out of service, every ``check_s`` seconds the guard prunes acknowledged records
  regardless of their retention (oldest first; an unacknowledged record never goes),
  checkpoints the WAL, and once the file system has room for the reserve again (plus
  ``reserve_bytes`` of working space) re-creates it and puts the engine back in service
  (an ``in_service`` event, one INFO line).
- :meth:`alarms` feed the status heartbeat: ``disk_low`` (no reserve, or less free space
  than two reserves) and ``out_of_service``.

Sizes are bytes, times seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from agent.journal import Journal

__all__ = ["DiskGuard"]

log = logging.getLogger(__name__)


class DiskGuard:
    """The reserve file in ``data_dir`` and the out-of-service state of a terminal.

    The engine goes out of service itself when :meth:`on_full` released the reserve;
    ``resume()`` puts it back (journaling ``in_service``). ``free_bytes(path)`` is
    injectable for tests of the arithmetic.
    """

    RESERVE_FILE = "journal.reserve"

    def __init__(self, data_dir: Path, journal: Journal, *, reserve_bytes: int,
                 resume: Callable[[], None],
                 check_s: float = 5.0,
                 free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free
                 ) -> None:
        self.path = Path(data_dir) / self.RESERVE_FILE
        self.journal = journal
        self.reserve_bytes = reserve_bytes
        self.check_s = check_s
        self._resume = resume
        self._free = free_bytes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.out_of_service = False
        self.fulls = 0
        """How many times the disk filled (status, tests)."""

    # -- the reserve -----------------------------------------------------------------------
    @property
    def reserved(self) -> bool:
        return self.path.exists() and self.path.stat().st_size >= self.reserve_bytes

    def ensure_reserve(self) -> bool:
        """Allocate the reserve if it is not there; False if the disk has no room for it."""
        if self.reserve_bytes <= 0 or self.reserved:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as err:
            self.path.unlink(missing_ok=True)
            log.debug("no room for the journal reserve (%d bytes): %s", self.reserve_bytes,
                      err)
            return False

    def release_reserve(self) -> bool:
        """Give the reserve back to the file system; True if there was one."""
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False

    # -- states ----------------------------------------------------------------------------
    def start(self) -> None:
        """Make sure of the reserve (a full disk at start is an alarm, not an error) and
        start the checks."""
        if not self.ensure_reserve():
            log.warning("disk low in %s: no room for the journal reserve (%d bytes)",
                        self.path.parent, self.reserve_bytes)
        self._thread = threading.Thread(target=self._run, name="disk-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def on_full(self) -> bool:
        """The disk refused the journal (called by the engine, between taps): release the
        reserve and go out of service. True if space was released (retry the append)."""
        with self._lock:
            released = self.release_reserve()
            if not self.out_of_service:
                self.out_of_service = True
                self.fulls += 1
                log.error("disk full in %s: out of service until space returns "
                          "(reserve %s)", self.path.parent,
                          "released" if released else "already used")
            return released

    def check(self) -> None:
        """One round: while out of service, prune and checkpoint; back in service when
        there is room for the reserve and as much again."""
        with self._lock:
            if not self.out_of_service:
                if not self.reserved:
                    self.ensure_reserve()
                return
            self.journal.prune(0)            # acked records first, whatever the retention
            self.journal.checkpoint()
            room = self._free(self.path.parent) + self.journal.free_pages_bytes()
            if room < 2 * self.reserve_bytes or not self.ensure_reserve():
                return
            self.out_of_service = False
            log.info("disk space returned in %s: back in service", self.path.parent)
            self._resume()

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except Exception:      # a check must never end the guard
                log.exception("disk check failed")

    def alarms(self) -> list[str]:
        """``out_of_service`` and/or ``disk_low`` for the status heartbeat."""
        out = ["out_of_service"] if self.out_of_service else []
        try:
            low = not self.reserved or self._free(self.path.parent) < self.reserve_bytes
        except OSError:
            low = True
        if low or self.out_of_service:
            out.append("disk_low")
        return out
