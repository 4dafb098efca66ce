"""The local policy store: the tap path's reader and the policy apply's writer (SQLite).

The tables are described in :mod:`agent.store_schema`. A delta writes only the overlay
tables: a 100k-row delta then dirties a few MiB of pages instead of ~70k random leaves of
a 10M-row B-tree, so the commit's flush no longer stalls the taps' journal fsyncs.
:meth:`PolicyStore.compact` merges the overlay in small, paced, view-preserving
transactions afterwards; a snapshot starts with empty overlays. A row in an overlay
overrides the big table's row with the same key.

A big snapshot goes to a new generation file instead (:mod:`agent.store_generations`);
:meth:`PolicyStore.refresh` follows the switch.

Reads on the tap path use one connection with a lock; bulk writes (policy apply) use
their own connection and one transaction, which WAL lets run beside the readers, so taps
never pause for an apply. During an apply the reader holds its read snapshot
(:meth:`PolicyStore.hold`), so a committed delta, like a new generation, is seen all at
once and only when the terminal switches to it (:meth:`PolicyStore.refresh`, together
with its rules).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.store_generations import (
    Generation,
    active_generation,
    build_generation,
    collect_garbage,
    switch_generation,
)
from agent.store_schema import (
    MIGRATIONS,
    TABLES,
    PolicyInfo,
    StoreError,
    connect,
    migrate,
    read_info,
    row_tuples,
    write_info,
)

__all__ = ["MIGRATIONS", "Generation", "PolicyInfo", "PolicyStore", "StoreError",
           "active_generation", "build_generation", "switch_generation"]

WAL_CHECKPOINT_BYTES = 1000 * 4096
"""A WAL larger than this (bytes) after a delta committed with ``wal_sync`` is
checkpointed: SQLite's own automatic checkpoint (1,000 pages of 4 KiB), which that commit
turns off. Normally the overlay merge truncates the WAL long before."""


class PolicyStore:
    """The policy store in the SQLite file at ``path`` (created and migrated if needed).

    Raises :class:`StoreError` if the file's schema is newer than this software knows.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.active_path = active_generation(self.path)
        self._conn = self._connect()
        self.migrate(sqlite_utils.Database(self._conn))
        self._info = self._read_info()

    def _connect(self, path: Path | None = None) -> sqlite3.Connection:
        return connect(path or self.active_path)

    @property
    def wal_path(self) -> Path:
        """The current generation's WAL file (it need not exist)."""
        return self.active_path.with_name(self.active_path.name + "-wal")

    @staticmethod
    def migrate(db: sqlite_utils.Database) -> int:
        """Apply pending migrations; return the schema version (see
        :func:`agent.store_schema.migrate`)."""
        return migrate(db)

    # -- tap path -----------------------------------------------------------------------
    def hotlisted(self, *keys: str) -> str | None:
        """The hotlist reason if any of ``keys`` (credential or holder keys) is listed."""
        keys = tuple(k for k in keys if k)
        if not keys:
            return None
        marks = ",".join("?" * len(keys))
        with self._lock:
            row = self._conn.execute(
                "SELECT reason FROM ("
                f" SELECT coalesce(reason, 'listed') AS reason, removed FROM hotlist_overlay"
                f"  WHERE key IN ({marks})"
                " UNION ALL"
                f" SELECT coalesce(reason, 'listed'), 0 FROM hotlist h WHERE key IN ({marks})"
                "  AND NOT EXISTS (SELECT 1 FROM hotlist_overlay o WHERE o.key = h.key)"
                ") WHERE removed = 0 LIMIT 1", keys + keys).fetchone()
        return None if row is None else str(row[0])

    def entitlements(self, holder_key: str, on: date) -> frozenset[str]:
        """Names the holder is entitled to on ``on`` (validity dates inclusive)."""
        if not holder_key:
            return frozenset()
        day = on.isoformat()
        with self._lock:
            rows = self._conn.execute(_ENTITLEMENTS_SQL, (holder_key, day)).fetchall()
        return frozenset(r[0] for r in rows)

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def _read_info(self, conn: sqlite3.Connection | None = None) -> PolicyInfo:
        return read_info(conn or self._conn)

    def artifact(self, name: str) -> bytes | None:
        """The body of the applied bundle's small part ``name`` (e.g. ``rules/bus_validator``,
        ``issuers``, ``root``), or None if the applied policy has none."""
        with self._lock:
            row = self._conn.execute("SELECT body FROM artifacts WHERE name = ?",
                                     (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def artifact_names(self) -> list[str]:
        """Names of the stored artifacts, sorted."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM artifacts ORDER BY 1")]

    def hold(self) -> None:
        """Keep reading the current state, whatever another process commits, until
        :meth:`refresh`. The policy applier calls it before the apply process writes, so
        a committed delta's rows are seen only when :meth:`refresh` switches to them with
        the new :attr:`info` (and the applier with the new rules). Between applies the
        reader takes a fresh snapshot per statement, which lets SQLite checkpoint and
        restart its WAL (a background merge never changes a decision)."""
        with self._lock:
            _pin(self._conn)

    def refresh(self) -> bool:
        """Follow a generation switch or an apply made by another process or connection,
        and end a :meth:`hold`: rows, artifacts and :attr:`info` change here, together.

        Opens the new generation (if the pointer moved) *before* taking the reader lock,
        so a tap waits at most for one attribute swap. Returns True if the policy identity
        or the generation changed. Raises :class:`StoreError` for an unusable generation
        (the old one stays in use).
        """
        target = active_generation(self.path)
        if target != self.active_path:
            conn = self._connect(target)
            try:
                self.migrate(sqlite_utils.Database(conn))
                info = self._read_info(conn)
            except BaseException:
                conn.close()
                raise
            with self._lock:
                old, self._conn, self.active_path = self._conn, conn, target
                self._info = info
            old.close()
            return True
        with self._lock:
            _release(self._conn)
            info = self._read_info()
            changed, self._info = info != self._info, info
        return changed

    def integrity_problems(self) -> list[str]:
        """``PRAGMA quick_check`` of the active generation: empty when consistent."""
        with self._lock:
            rows = [str(r[0]) for r in self._conn.execute("PRAGMA quick_check")]
        return [] if rows == ["ok"] else rows

    def collect_garbage(self) -> list[Path]:
        """Delete generations (and unfinished ``*.staging`` files) that are not current.

        Call it when no apply is running (daemon start, before staging). Returns the
        removed paths.
        """
        return collect_garbage(self.path, keep=active_generation(self.path))

    def counts(self) -> dict[str, int]:
        """Row counts as the taps see them (big table and overlay together):
        entitlements, hotlist."""
        out: dict[str, int] = {}
        with self._lock:
            for t, key, _cols in TABLES:
                match = " AND ".join(f"m.{k} = o.{k}" for k in key)
                n, added, removed = self._conn.execute(
                    f"SELECT (SELECT count(*) FROM {t}),"
                    f" (SELECT count(*) FROM {t}_overlay o WHERE removed = 0 AND NOT EXISTS"
                    f"  (SELECT 1 FROM {t} m WHERE {match})),"
                    f" (SELECT count(*) FROM {t}_overlay o WHERE removed = 1 AND EXISTS"
                    f"  (SELECT 1 FROM {t} m WHERE {match}))").fetchone()
                out[t] = int(n) + int(added) - int(removed)
        return out

    def overlay_rows(self) -> int:
        """Delta rows (both tables) waiting for :meth:`compact`, in the reader's snapshot."""
        with self._lock:
            return int(self._conn.execute(
                "SELECT (SELECT count(*) FROM entitlements_overlay)"
                " + (SELECT count(*) FROM hotlist_overlay)").fetchone()[0])

    def compact(self, *, batch_rows: int = 500, pause_s: float = 0.05,
                stop: Callable[[], bool] = lambda: False,
                after_batch: Callable[[int], None] | None = None,
                checkpoint_pages: int | None = None,
                wal_sync: Callable[[Path], object] | None = None,
                checkpoint_sync: Callable[[Path, Path], object] | None = None) -> int:
        """Merge the overlays into the big tables; return the rows merged.

        Each batch (``batch_rows`` overlay rows in key order) is one transaction on its own
        connection that applies the rows to the big table and deletes them from the
        overlay: every committed state decides exactly as the one before, so readers may
        move to it at any time and a kill at any instant loses nothing. ``pause_s``
        (seconds) between batches paces the disk writes so the taps' journal fsyncs are
        not queued behind a long flush. Returns early when ``stop()`` is true;
        ``after_batch(rows_so_far)`` is called after each commit. Raises
        ``sqlite3.Error`` (the batch in progress is rolled back) or ``OSError`` (from the
        syncs). ``checkpoint_pages``
        sets the WAL auto-checkpoint (pages): small on slow storage, so that no single
        checkpoint queues thousands of random page writes ahead of a tap's fsync.

        With ``wal_sync`` and ``checkpoint_sync`` (:func:`agent.policy.walsync.trickle_sync`
        and :func:`~agent.policy.walsync.checkpoint_sync`) SQLite syncs nothing itself
        (``synchronous=OFF``, no automatic checkpoint): after each commit ``wal_sync(wal)``
        makes the WAL durable, then a PASSIVE checkpoint copies the batch's pages into the
        database file and ``checkpoint_sync(db, wal)`` makes them durable, both in small
        pieces, before the next batch may restart the WAL. ``checkpoint_sync`` also runs
        first, for a merge killed between its checkpoint and that sync (as in
        :meth:`apply`).
        """
        conn = self._connect()
        db, wal = self.active_path, self.wal_path
        if wal_sync is not None and checkpoint_sync is not None:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        elif checkpoint_pages:
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint_pages)}")
        moved = 0
        try:
            if checkpoint_sync is not None:
                checkpoint_sync(db, wal)
            while not stop():
                n = _compact_batch(conn, batch_rows)
                if n == 0:
                    break
                moved += n
                if wal_sync is not None and checkpoint_sync is not None:
                    wal_sync(wal)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    checkpoint_sync(db, wal)
                if after_batch is not None:
                    after_batch(moved)
                time.sleep(pause_s)
            if moved:     # leave an empty WAL behind (readers are between statements)
                conn.execute("PRAGMA synchronous=FULL")   # synced before it is truncated
                conn.execute("PRAGMA busy_timeout = 1000")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        return moved

    # -- bulk writes (policy apply, demo seeding) ---------------------------------------
    def apply(
        self,
        *,
        entitlements: Iterable[Mapping[str, Any] | Sequence[Any]] = (),
        remove_entitlements: Iterable[tuple[str, str]] = (),
        hotlist: Iterable[Mapping[str, Any] | Sequence[Any]] = (),
        remove_hotlist: Iterable[str] = (),
        replace: bool = False,
        info: PolicyInfo | None = None,
        artifacts: Mapping[str, tuple[str, bytes]] | None = None,
        expect: PolicyInfo | None = None,
        wal_sync: Callable[[Path], object] | None = None,
        checkpoint_sync: Callable[[Path, Path], object] | None = None,
    ) -> None:
        """Apply changes in ONE transaction on a separate connection: all or nothing.

        ``entitlements`` rows have ``holder_key, name, valid_from, valid_until`` (mappings
        or tuples in that order); ``hotlist`` rows have ``key, kind, reason, listed``.
        ``replace`` clears both tables and the overlays first and writes the big tables
        (a snapshot); otherwise the changes go to the overlays (a delta; see
        :meth:`compact`). ``artifacts`` maps a name to
        ``(hash, body)`` and, when given, replaces every stored artifact. ``expect`` makes
        the transaction fail with :class:`StoreError` unless the stored policy is exactly
        that (a delta's base). Rows are streamed:
        memory stays bounded whatever the size. Readers keep seeing the old state until
        the commit.

        ``wal_sync(wal_path)``, when given, makes the commit durable instead of SQLite's
        own ``fsync`` (:func:`agent.policy.walsync.trickle_sync`: in small pieces): the
        transaction commits with ``synchronous=NORMAL`` and without an automatic
        checkpoint, then ``wal_sync`` runs before this returns; a WAL grown past
        :data:`WAL_CHECKPOINT_BYTES` is then checkpointed (PASSIVE) as SQLite's automatic
        checkpoint would have. An ``OSError`` from it propagates: the transaction is
        committed but maybe not durable. ``checkpoint_sync(db, wal)``
        (:func:`agent.policy.walsync.checkpoint_sync`), when given, runs before anything is
        written: a merge killed between a checkpoint and its sync (:meth:`compact`) left
        those pages in the page cache only, and this commit may restart the WAL.
        """
        if checkpoint_sync is not None:
            checkpoint_sync(self.active_path, self.wal_path)
        conn = self._connect()
        if wal_sync is not None:
            conn.execute("PRAGMA synchronous=NORMAL")      # no fsync in the COMMIT
            conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if expect is not None:
                    have = self._read_info(conn)
                    if have != expect:
                        raise StoreError(f"store holds {have.label} ({have.hash[:12]}), "
                                         f"expected {expect.label} ({expect.hash[:12]})")
                removals = {"entitlements": remove_entitlements,
                            "hotlist": ((k,) for k in remove_hotlist)}
                adds = {"entitlements": entitlements, "hotlist": hotlist}
                for t, key, cols in TABLES:
                    if replace:       # a snapshot: nothing to remove, no overlay left
                        conn.execute(f"DELETE FROM {t}")
                        conn.execute(f"DELETE FROM {t}_overlay")
                        conn.executemany(f"INSERT OR REPLACE INTO {t} VALUES (?, ?, ?, ?)",
                                         row_tuples(adds[t], cols))
                        continue
                    blanks = ", ".join(["''"] * (len(cols) - len(key)))
                    conn.executemany(f"INSERT OR REPLACE INTO {t}_overlay VALUES "
                                     f"({', '.join('?' * len(key))}, {blanks}, 1)", removals[t])
                    conn.executemany(f"INSERT OR REPLACE INTO {t}_overlay VALUES "
                                     "(?, ?, ?, ?, 0)", row_tuples(adds[t], cols))
                if artifacts is not None:
                    conn.execute("DELETE FROM artifacts")
                    for name, (digest, body) in artifacts.items():
                        conn.execute("INSERT INTO artifacts VALUES (?, ?, ?)",
                                     (name, digest, body))
                if info is not None:
                    write_info(conn, info)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if wal_sync is not None:
                wal = self.wal_path
                wal_sync(wal)
                if wal.stat().st_size > WAL_CHECKPOINT_BYTES:
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()
        with self._lock:
            _release(self._conn)
            self._info = self._read_info()

    def close(self) -> None:
        """Close the reader connection. Safe twice."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass


_VALID_ON = ("(valid_from IS NULL OR valid_from = '' OR valid_from <= ?2) "
             "AND (valid_until IS NULL OR valid_until = '' OR valid_until >= ?2)")
_ENTITLEMENTS_SQL = (
    f"SELECT name FROM entitlements_overlay WHERE holder_key = ?1 AND removed = 0 "
    f"AND {_VALID_ON} "
    f"UNION ALL SELECT name FROM entitlements e WHERE holder_key = ?1 AND {_VALID_ON} "
    f"AND NOT EXISTS (SELECT 1 FROM entitlements_overlay o "
    f"WHERE o.holder_key = ?1 AND o.name = e.name)")


def _compact_batch(conn: sqlite3.Connection, limit: int) -> int:
    """Move up to ``limit`` overlay rows (entitlements first) into the big tables in one
    transaction; return how many."""
    moved = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for t, key, cols in TABLES:
            keys = ", ".join(key)
            match = " AND ".join(f"{k} = ?" for k in key)
            rows = conn.execute(f"SELECT {', '.join(cols)}, removed FROM {t}_overlay "
                                f"ORDER BY {keys} LIMIT ?", (limit - moved,)).fetchall()
            ids = [r[:len(key)] for r in rows]
            conn.executemany(f"DELETE FROM {t} WHERE {match}",
                             [r[:len(key)] for r in rows if r[-1]])
            conn.executemany(f"INSERT OR REPLACE INTO {t} VALUES (?, ?, ?, ?)",
                             [r[:-1] for r in rows if not r[-1]])
            conn.executemany(f"DELETE FROM {t}_overlay WHERE {match}", ids)
            moved += len(rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return moved


def _pin(conn: sqlite3.Connection) -> None:
    """Open a read transaction on ``conn`` (ending one it holds) on the newest commit.

    The reader keeps that snapshot until :func:`_release`, so a delta committed by the
    apply process meanwhile (WAL: readers never block it, nor it them) is not seen.
    Frames the snapshot needs stay in the WAL until then.
    """
    _release(conn)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


def _release(conn: sqlite3.Connection) -> None:
    """End ``conn``'s read transaction, if any: each statement reads the newest commit."""
    if conn.in_transaction:
        conn.execute("COMMIT")
