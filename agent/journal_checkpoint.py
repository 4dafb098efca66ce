"""The journal's WAL checkpoints, off the tap path (issue 15, ``docs/decisions.md`` 44).

SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses its threshold: the
tap whose record happens to fill the WAL also copies every page the WAL holds into the
database file and ``fsync``\\ s it before :meth:`agent.journal.Journal.append` returns. On
an SD card that is hundreds of random page writes in front of one rider.

:class:`Checkpointer` moves that work to a background thread with its own connection: it
runs ``PRAGMA wal_checkpoint(PASSIVE)`` in a pause between taps (``quiet_s``), or after
``every`` commits (:data:`EVERY_COMMITS`) when taps never pause — but only while no tap
is being decided (:meth:`tap_started` … :meth:`tap_done`, the daemon calls them around
each presentation), so a checkpoint never starts in front of a tap's commit. A
PASSIVE checkpoint takes no writer lock, so a tap that arrives while one runs commits
beside it. Durability is unchanged: a tap's commit is still durable (WAL,
``synchronous=FULL``) before it returns, and a checkpoint interrupted by a crash is redone
from the WAL on the next open (SQLite's own recovery; ``tests/test_journal_checkpoint.py``
kills a writer mid-way). The WAL stays bounded: the writer connection keeps an automatic
checkpoint at :data:`HARD_LIMIT_PAGES` (4 MiB), reached only when taps come back to back
for that long; then the commit pays for it as it always did.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from agent.between_taps import TapWatch

__all__ = ["EVERY_COMMITS", "HARD_LIMIT_PAGES", "Checkpointer"]

log = logging.getLogger(__name__)

HARD_LIMIT_PAGES = 1024
"""The writer's own automatic checkpoint (pages of 4 KiB): the WAL's bound."""
EVERY_COMMITS = 16
"""When taps never pause: a checkpoint after this many commits. While each tap dirtied a
random page of two B-trees (its counters, its passback entry), a checkpoint after 64
commits wrote ~95 random pages at once — 63 ms of an A1 card's 1,500 write IOPS that the
next taps' WAL writes queued behind; after 16, ~25 (``docs/decisions.md`` 47). Since
those live in an append-only log (:mod:`agent.journal_effects`, decision 52) 16 commits
dirty ~4 neighbouring pages."""


class Checkpointer(TapWatch):
    """Checkpoints the WAL of the SQLite file at ``path`` in a thread, between taps.

    A checkpoint runs once no tap has come for ``quiet_s`` seconds (monotonic), or, when
    taps never pause that long, after ``every`` commits (:meth:`committed`) as soon as no
    tap is being decided. Counters for tests and
    the bench: ``runs`` (checkpoints run), ``held`` (times one was due but waited for a
    tap). :meth:`close` stops the thread; never raises.
    """

    def __init__(self, path: str | Path, *, every: int = EVERY_COMMITS,
                 quiet_s: float = 0.2) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = max(1, every)
        self.quiet_s = quiet_s
        self.runs = 0
        self.held = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.execute("PRAGMA synchronous=FULL")
        self._pending = 0            # commits since the last checkpoint
        self._thread = threading.Thread(target=self._loop, name="journal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """The journal committed a transaction (called after the commit, off its lock)."""
        with self._cond:
            self._pending += 1
            self._cond.notify_all()

    def _wait_s(self) -> float | None:
        """0 when a checkpoint may start now, else how long to wait (None: for news)."""
        if not self._pending:
            return None
        if self._in_flight:
            if self._pending >= self.every:
                self.held += 1
                self._cond.notify_all()
            return None
        if self._pending >= self.every:
            return 0.0
        return max(0.0, self._last_tap + self.quiet_s - self.clock())

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._due(self._wait_s):
                    return
                self._pending = 0
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as err:       # busy, no space: the next commit retries
                log.debug("journal checkpoint deferred: %s", err)
            with self._cond:
                self.runs += 1
                self._cond.notify_all()

    def wait_runs(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until ``n`` checkpoints have run (tests). True if they did."""
        with self._cond:
            return self._cond.wait_for(lambda: self.runs >= n, timeout)

    def wait_held(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until a due checkpoint has waited for a tap ``n`` times (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.held >= n, timeout)

    def close(self) -> None:
        """Stop the thread (a checkpoint under way finishes) and close the connection."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        try:
            self._db.close()
        except sqlite3.Error:
            pass
