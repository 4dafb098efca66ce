"""The durable, hash-chained journal of every decision, and the per-holder counters.

One SQLite file in WAL mode with ``synchronous=FULL``: :meth:`Journal.append` returns only
after the record (and the counters it changes) are committed to disk, so the gate may open
or the buzzer sound. Sequence numbers start at 1 and have no gaps; each record's ``prev``
is the previous record's hash. The exact canonical encoding is in ``docs/protocol.md``.

Records are never deleted before the hub has acknowledged them (:meth:`mark_acked`), and
then only after a retention period (:meth:`prune`). The newest record is always kept so
the chain can continue after a prune.

Thread safety: one writer lock for appends/acks/prunes; readers (the uplink) use their own
connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import errno
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import journal_effects
from agent.errors import YktError
from agent.journal_checkpoint import HARD_LIMIT_PAGES, Checkpointer
from agent.model import JournalRecord
from agent.records import (
    GENESIS,
    ChainBreak,
    canonical,
    parse_utc,
    record_hash,
    utc_stamp,
    verify_chain,
)

__all__ = [
    "GENESIS",
    "ChainBreak",
    "Journal",
    "JournalError",
    "canonical",
    "parse_utc",
    "record_hash",
    "utc_stamp",
    "verify_chain",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

WAL_LIMIT_BYTES = 1 << 20
"""The WAL is truncated to at most this many bytes after a checkpoint (1 MiB)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq  INTEGER PRIMARY KEY,
    body TEXT    NOT NULL,
    hash TEXT    NOT NULL,
    ts   REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class JournalError(YktError, RuntimeError):
    """The journal cannot be written or is inconsistent (wrong terminal, broken file).

    ``disk_full`` is True when the file system refused to grow the file (SQLITE_FULL or
    ENOSPC): an alarm the terminal handles itself (:mod:`agent.diskguard`), not a bug.
    """

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


_SQLITE_FULL = 13


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        return code == _SQLITE_FULL or "disk is full" in str(err)
    return isinstance(err, OSError) and err.errno == errno.ENOSPC


class Journal:
    """Append-only journal for one terminal, in the SQLite file at ``path``.

    Raises :class:`JournalError` if the file belongs to another terminal.
    """

    def __init__(self, path: str | Path, terminal: str, *, clock: Any = time.time,
                 background_checkpoint: bool = False) -> None:
        self.path = Path(path)
        self.terminal = terminal
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = self._connect()
        self._db.executescript(_SCHEMA)
        owner = self._meta("terminal")
        if owner is None:
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('terminal', ?)", (terminal,))
        elif owner != terminal:
            raise JournalError(
                f"{self.path} is the journal of terminal {owner!r}, not {terminal!r}"
            )
        row = self._db.execute(
            "SELECT seq, hash, ts FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        self._last_seq: int
        self._last_hash: str
        self._last_seq, self._last_hash = (row[0], row[1]) if row else (0, GENESIS)
        self.last_time: float = float(row[2]) if row else 0.0
        """The time (epoch s) of the newest record when the journal was opened."""
        self._acked = int(self._meta("acked_seq") or 0)
        epoch = self._meta("epoch")
        if epoch is None:
            # a new journal is a new incarnation of the terminal; one that already holds
            # records (written before epochs existed) continues the legacy epoch ""
            epoch = "" if row else secrets.token_hex(16)
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
        self.epoch: str = epoch  # incarnation id; the hub keys records by (terminal, epoch, seq)
        try:     # the counters and passback times (agent.journal_effects)
            self._fx = journal_effects.load(self._db, self._meta(journal_effects.CUT_KEY),
                                            self.last_time)
        except (ValueError, KeyError, TypeError) as err:
            raise JournalError(f"{self.path}: unreadable counters: {err!r}") from err
        self._reader_lock = threading.Lock()
        self._reader = self._connect()
        self.checkpointer: Checkpointer | None = None   # WAL checkpoints between taps
        if background_checkpoint:
            self._db.execute(f"PRAGMA wal_autocheckpoint={HARD_LIMIT_PAGES}")
            self.checkpointer = Checkpointer(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # checkpoint every ~1 MiB of WAL (not SQLite's 4 MiB) and truncate the WAL to
        # that after each checkpoint: it never keeps megabytes that a full disk needs back
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT_BYTES // 4096}")   # pages
        return db

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (after a prune, on a full disk).
        Never raises: a checkpoint that cannot run now (a reader, no space) is retried by
        the next call."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                log.debug("checkpoint of %s deferred: %s", self.path, err)

    def free_pages_bytes(self) -> int:
        """Bytes of pages inside the file that pruned records left free for new ones."""
        with self._lock:
            try:
                free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
                size = self._db.execute("PRAGMA page_size").fetchone()[0]
            except sqlite3.Error:
                return 0
        return int(free) * int(size)

    def get_meta(self, key: str) -> str | None:
        """A value of the journal's meta table (None if unset)."""
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: str) -> None:
        """Durably set a meta value (the time anchor, the acked seq)."""
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- writing -------------------------------------------------------------------------
    def append(
        self,
        fields: Mapping[str, Any],
        *,
        counters: Mapping[tuple[str, str, str], int] | None = None,
        last_tap: tuple[str, str] | None = None,
        at: float | None = None,
    ) -> JournalRecord:
        """Durably append one record and apply counter changes in the same transaction.

        ``fields`` are the record's content (see ``docs/protocol.md``); ``terminal``,
        ``seq``, ``prev``, ``time`` and ``v`` are filled in here. ``counters`` maps
        ``(holder_key, counter, day)`` to a delta; ``last_tap`` is ``(credential_key, scope)``
        to remember for passback. ``at`` is the wall time (epoch seconds) of the record.
        Returns the committed record. Raises :class:`JournalError` when the disk refuses.
        """
        ts = self._clock() if at is None else at
        with self._lock:
            seq = self._last_seq + 1
            body = dict(fields)
            body.setdefault("clock", "synced")
            body.update(v=FORMAT_VERSION, terminal=self.terminal, seq=seq, prev=self._last_hash,
                        time=utc_stamp(ts))
            digest = record_hash(body)
            text = canonical(body).decode()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("INSERT INTO records VALUES (?,?,?,?)", (seq, text, digest, ts))
                    fx = journal_effects.row_for(counters, last_tap)
                    if fx is not None:
                        self._db.execute("INSERT INTO effects VALUES (?,?,?)", (seq, ts, fx))
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:   # SQLITE_FULL has rolled it back already
                        self._db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as err:
                raise JournalError(f"cannot append to journal {self.path}: {err}",
                                   disk_full=_is_disk_full(err)) from err
            self._last_seq, self._last_hash = seq, digest
            self._fx.apply(ts, counters, last_tap)
        if self.checkpointer is not None:
            self.checkpointer.committed()
        return JournalRecord(seq=seq, body=body, hash=digest)

    def mark_acked(self, seq: int) -> int:
        """Record that the hub has durably stored every record up to ``seq``.

        Acks never go backwards; an ack beyond the last record is refused (logged) since
        the hub cannot have stored what was never written. Returns the acked sequence.
        """
        with self._lock:
            if seq > self._last_seq:
                log.error("hub acked seq %d beyond last journaled seq %d: ignored",
                          seq, self._last_seq)
                return self._acked
            if seq <= self._acked:
                return self._acked
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('acked_seq', ?)", (str(seq),))
            self._acked = seq
            return seq

    def resync_acked(self, seq: int) -> int:
        """Set the acked seq to ``seq``, even lower: the hub lost records (``sync.uplink``).
        ``ValueError`` outside ``0..last_seq``. Returns the previous acked seq."""
        with self._lock:
            if not 0 <= seq <= self._last_seq:
                raise ValueError(f"resync to seq {seq} outside 0..{self._last_seq}")
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('acked_seq', ?)",
                                 (str(seq),))
            old, self._acked = self._acked, seq
            return old

    def hash_at(self, seq: int) -> str | None:
        """The hash of record ``seq`` (:data:`GENESIS` for 0), or None if it is not held
        (pruned, or not written)."""
        if seq == 0:
            return GENESIS
        with self._reader_lock:
            row = self._reader.execute("SELECT hash FROM records WHERE seq=?",
                                       (seq,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def first_seq(self) -> int:
        """The lowest seq still held (``last_seq + 1`` when empty)."""
        with self._reader_lock:
            row = self._reader.execute("SELECT min(seq) FROM records").fetchone()
        return self._last_seq + 1 if row[0] is None else int(row[0])

    def prune(self, retention_s: float, *, batch: int = 2000) -> int:
        """Delete acknowledged records older than ``retention_s`` seconds; keep the newest.

        Only a prefix of the journal goes: everything below the first record that is
        unacknowledged or not older than the cutoff, so a record stamped by a clock that
        was set back never leaves a hole in the chain. The cutoff is read from the
        journal's clock (the daemon's decision time, which does not follow wall-clock
        jumps). Deletes at most ``batch`` records per transaction and releases the writer
        lock in between, so a large prune (after a long offline period) never stalls a
        tap's append. Returns how many records were deleted.
        """
        cutoff = self._clock() - retention_s
        with self._reader_lock:      # a scan, off the writer's lock: records only grow newer
            young = self._reader.execute("SELECT min(seq) FROM records WHERE ts >= ?",
                                         (cutoff,)).fetchone()[0]
        deleted = self._delete_prefix("records", lambda: min(
            self._acked + 1, self._last_seq, self._last_seq + 1 if young is None else young),
            batch)
        self._prune_effects(cutoff, batch)
        return deleted

    def _delete_prefix(self, table: str, below: Callable[[], int], batch: int) -> int:
        """Delete the rows of ``table`` (``records`` or ``effects``) whose ``seq`` is below
        ``below()`` (read under the writer lock for each batch), at most ``batch`` seqs a
        transaction, releasing the lock in between so that no tap's append waits behind a
        large prune. Returns how many rows went."""
        deleted = 0
        while True:
            with self._lock, self._db:
                end = below()
                first = self._db.execute(f"SELECT min(seq) FROM {table}").fetchone()[0]
                if first is None or first >= end:
                    return deleted
                deleted += self._db.execute(f"DELETE FROM {table} WHERE seq >= ? AND seq < ?",
                                            (first, min(end, first + batch))).rowcount

    def _prune_effects(self, cutoff: float, batch: int) -> None:
        """Forget counters of days before ``cutoff`` - 2 days and passback times before
        ``cutoff`` (the cut, in meta: a reopen forgets them too), and delete the prefix
        of the effects log older than ``cutoff`` - 3 days, in batches."""
        day_cut = utc_stamp(cutoff - 2 * 86400)[:10]
        with self._lock, self._db:
            old = json.loads(self._meta(journal_effects.CUT_KEY) or '{"day":"","ts":0}')
            day_cut, cutoff = max(day_cut, old["day"]), max(cutoff, old["ts"])
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (
                journal_effects.CUT_KEY, json.dumps({"day": day_cut, "ts": cutoff})))
            self._fx.cut(day_cut, cutoff)
            top = self._last_seq
        with self._reader_lock:
            keep = self._reader.execute("SELECT min(seq) FROM effects WHERE ts >= ?",
                                        (cutoff - 3 * 86400,)).fetchone()[0]
        end = top + 1 if keep is None else min(keep, top + 1)
        self._delete_prefix("effects", lambda: end, batch)

    def check(self) -> str | None:
        """Is the file still the journal this object writes? None if so, else what is wrong.

        The newest row on disk must be the record this object appended last: another
        writer (a second daemon, a file restored underneath) breaks that, and every later
        append would collide. Cheap (one indexed read); the daemon's watchdog runs it.
        """
        if not self._lock.acquire(blocking=False):
            return None          # an append is under way: the worker's liveness covers it
        try:
            try:
                row = self._db.execute(
                    "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            except sqlite3.Error as err:
                return f"cannot read journal {self.path}: {err}"
            if row is None and self._last_seq == 0:
                return None
            if row is None or (row[0], row[1]) != (self._last_seq, self._last_hash):
                on_disk = "no record" if row is None else f"seq {row[0]}"
                return (f"journal {self.path} changed underneath: {on_disk} on disk, "
                        f"seq {self._last_seq} written last by this daemon")
            return None
        finally:
            self._lock.release()

    # -- reading -------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def pending_count(self) -> int:
        """Records journaled but not yet acknowledged by the hub (the outbox depth)."""
        return self._last_seq - self._acked

    def bodies_since(self, since: float, *, limit: int = 100_000) -> list[dict[str, Any]]:
        """The bodies of the records stamped at or after ``since`` (epoch s), oldest first,
        at most the newest ``limit`` (a restart rebuilds the replay cache from them)."""
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT body FROM records WHERE seq > ? AND ts >= ? ORDER BY seq",
                (self._last_seq - limit, since)).fetchall()
        return [json.loads(b) for (b,) in rows]

    def records(self, after: int = 0, limit: int = 1000) -> list[JournalRecord]:
        """Up to ``limit`` records with ``seq > after``, in order (uses the reader connection)."""
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT seq, body, hash FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [JournalRecord(seq=s, body=json.loads(b), hash=h) for s, b, h in rows]

    def raw_records(self, after: int = 0, limit: int = 1000) -> list[tuple[int, str, str]]:
        """Like :meth:`records` but ``(seq, canonical body text, hash)``, without parsing."""
        with self._reader_lock:
            return self._reader.execute(
                "SELECT seq, body, hash FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()

    def count(self, holder_key: str, counter: str, day: str) -> int:
        """Current value of a per-holder counter for a local day (``YYYY-MM-DD``)."""
        with self._lock:
            return self._fx.counts.get((holder_key, counter, day), 0)

    def last_tap(self, credential_key: str, scope: str) -> float | None:
        """Wall time (epoch s) of this credential's last counted tap in ``scope``, if any."""
        with self._lock:
            return self._fx.last.get((credential_key, scope))

    def verify(self) -> list[ChainBreak]:
        """Verify the whole chain that is still on disk. Returns the breaks (empty = good)."""
        first = self._db.execute("SELECT min(seq) FROM records").fetchone()[0]
        if first is None:
            return []
        prev = GENESIS
        if first > 1:
            # after a prune the first kept record's prev is trusted as the anchor
            prev = json.loads(
                self._db.execute("SELECT body FROM records WHERE seq=?", (first,)).fetchone()[0]
            )["prev"]
        breaks: list[ChainBreak] = []
        after = first - 1
        while True:
            batch = self.records(after, 5000)
            if not batch:
                break
            breaks += verify_chain(batch, prev, after + 1)
            prev, after = batch[-1].hash, batch[-1].seq
        return breaks

    def close(self) -> None:
        """Close both connections. Safe to call twice."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self._lock, self._reader_lock:
            for db in (self._db, self._reader):
                try:
                    db.close()
                except sqlite3.Error:
                    pass
