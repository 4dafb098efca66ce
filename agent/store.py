"""The local policy store: entitlements, hotlist and the applied policy's identity (SQLite).

Keys are pseudonymous (keyed hashes, see :mod:`agent.pseudonym`): the store never holds
a raw 社会保障号码, card number or name.

* ``entitlements(holder_key, name, valid_from, valid_until)`` — what a holder is entitled
  to: categories (``elderly``, ``disabled``, ``youfu``, ``student``) and products such as
  pre-booked tickets (``ticket:taishan``), each with inclusive ISO validity dates.
* ``hotlist(key, kind, reason, listed)`` — lost/stolen cards (``kind = "card"``, key =
  credential key) and blocked holders (``kind = "holder"``).
* ``policy`` — the channel, version, hash and expiry of the applied bundle.
* ``artifacts(name, hash, body)`` — the small parts of the applied bundle (rule files,
  trusted issuer keys, settings, the policy signers' root), switched with the data.
* ``entitlements_overlay`` and ``hotlist_overlay`` — the rows of deltas not yet merged
  into the two big tables, each with ``removed`` (1 = the delta removes that key). A row
  here overrides the big table's row with the same key. A delta writes only here: a
  100k-row delta then dirties a few MiB of pages instead of ~70k random leaves of a
  10M-row B-tree, so the commit's flush no longer stalls the taps' journal fsyncs.
  :meth:`PolicyStore.compact` merges the overlay in small, paced, view-preserving
  transactions afterwards; a snapshot starts with empty overlays.

**Generations.** A big snapshot is loaded into a new file (a *generation*,
``store.db.g<version>-<token>``) in the background, then made current by atomically
replacing the pointer file ``store.db.current`` (:func:`switch_generation`); readers
move to it on :meth:`PolicyStore.refresh`. Without a pointer file the data lives in
``store.db`` itself. A power loss leaves the pointer naming either the old or the new,
complete generation; unfinished ``*.staging`` files are removed by
:meth:`PolicyStore.collect_garbage`.

Schema changes are migrations (``MIGRATIONS``), tracked in ``PRAGMA user_version``.
Reads on the tap path use one connection with a lock; bulk writes (policy apply) use
their own connection and one transaction, which WAL lets run beside the readers, so taps
never pause for an apply. During an apply the reader holds its read snapshot
(:meth:`PolicyStore.hold`), so a committed delta, like a new generation, is seen all at
once and only when the terminal switches to it (:meth:`PolicyStore.refresh`, together
with its rules).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

__all__ = ["MIGRATIONS", "Generation", "PolicyInfo", "PolicyStore", "StoreError",
           "active_generation", "build_generation", "switch_generation"]


class StoreError(RuntimeError):
    """The store file is unusable (newer schema than this software, corrupt)."""


def _m1_initial(db: sqlite_utils.Database) -> None:
    db["entitlements"].create(  # type: ignore[union-attr]
        {"holder_key": str, "name": str, "valid_from": str, "valid_until": str},
        pk=("holder_key", "name"), not_null={"holder_key", "name"},
    )
    db["hotlist"].create(  # type: ignore[union-attr]
        {"key": str, "kind": str, "reason": str, "listed": str}, pk="key",
        not_null={"key", "kind"},
    )
    db["policy"].create(  # type: ignore[union-attr]
        {"id": int, "channel": str, "version": int, "hash": str, "expires": str,
         "applied": str}, pk="id",
    )


def _m2_without_rowid(db: sqlite_utils.Database) -> None:
    # Lookups are by primary key only: WITHOUT ROWID halves the index size at 10M rows.
    for name, cols, pk in (
        ("entitlements", "holder_key TEXT NOT NULL, name TEXT NOT NULL, valid_from TEXT, "
                         "valid_until TEXT", "holder_key, name"),
        ("hotlist", "key TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT, listed TEXT", "key"),
    ):
        db.execute(f"CREATE TABLE {name}_new ({cols}, PRIMARY KEY ({pk})) WITHOUT ROWID")
        db.execute(f"INSERT INTO {name}_new SELECT * FROM {name}")
        db.execute(f"DROP TABLE {name}")
        db.execute(f"ALTER TABLE {name}_new RENAME TO {name}")


def _m3_artifacts(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE artifacts (name TEXT PRIMARY KEY, hash TEXT NOT NULL, "
               "body BLOB NOT NULL) WITHOUT ROWID")


def _m4_overlay(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE entitlements_overlay (holder_key TEXT NOT NULL, "
               "name TEXT NOT NULL, valid_from TEXT, valid_until TEXT, "
               "removed INTEGER NOT NULL, PRIMARY KEY (holder_key, name)) WITHOUT ROWID")
    db.execute("CREATE TABLE hotlist_overlay (key TEXT NOT NULL, kind TEXT NOT NULL, "
               "reason TEXT, listed TEXT, removed INTEGER NOT NULL, PRIMARY KEY (key)) "
               "WITHOUT ROWID")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_initial, _m2_without_rowid, _m3_artifacts, _m4_overlay]
"""Schema migrations in order; ``user_version`` = how many have been applied."""


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """Identity of the applied policy bundle (empty channel = embedded defaults)."""

    channel: str = ""
    version: int = 0
    hash: str = ""
    expires: str = ""   # RFC 3339, "" = never

    @property
    def label(self) -> str:
        """Short form journaled with each decision, e.g. ``city/370302/bus@42``."""
        return f"{self.channel}@{self.version}" if self.channel else "local@0"


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
        conn = sqlite3.connect(path or self.active_path, check_same_thread=False, timeout=30,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-8192")  # 8 MiB: bounded memory on a Pi
        return conn

    @staticmethod
    def migrate(db: sqlite_utils.Database) -> int:
        """Apply pending migrations; return the schema version."""
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(f"store schema version {version} is newer than this software "
                             f"({len(MIGRATIONS)}); upgrade Yikatong Edge")
        for n in range(version, len(MIGRATIONS)):
            with db.conn:
                db.execute("BEGIN")
                MIGRATIONS[n](db)
                db.execute(f"PRAGMA user_version = {n + 1}")
        return len(MIGRATIONS)

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
        row = (conn or self._conn).execute(
            "SELECT channel, version, hash, expires FROM policy WHERE id = 1").fetchone()
        return PolicyInfo(*row) if row else PolicyInfo()

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
        return _collect_garbage(self.path, keep=active_generation(self.path))

    def counts(self) -> dict[str, int]:
        """Row counts as the taps see them (big table and overlay together):
        entitlements, hotlist."""
        out: dict[str, int] = {}
        with self._lock:
            for t, key, _cols in _TABLES:
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
                after_batch: Callable[[int], None] | None = None) -> int:
        """Merge the overlays into the big tables; return the rows merged.

        Each batch (``batch_rows`` overlay rows in key order) is one transaction on its own
        connection that applies the rows to the big table and deletes them from the
        overlay: every committed state decides exactly as the one before, so readers may
        move to it at any time and a kill at any instant loses nothing. ``pause_s``
        (seconds) between batches paces the disk writes so the taps' journal fsyncs are
        not queued behind a long flush. Returns early when ``stop()`` is true;
        ``after_batch(rows_so_far)`` is called after each commit. Raises
        ``sqlite3.Error`` (the batch in progress is rolled back).
        """
        conn = self._connect()
        moved = 0
        try:
            while not stop():
                n = _compact_batch(conn, batch_rows)
                if n == 0:
                    break
                moved += n
                if after_batch is not None:
                    after_batch(moved)
                time.sleep(pause_s)
            if moved:     # leave an empty WAL behind (readers are between statements)
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
        """
        conn = self._connect()
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
                for t, key, cols in _TABLES:
                    if replace:       # a snapshot: nothing to remove, no overlay left
                        conn.execute(f"DELETE FROM {t}")
                        conn.execute(f"DELETE FROM {t}_overlay")
                        conn.executemany(f"INSERT OR REPLACE INTO {t} VALUES (?, ?, ?, ?)",
                                         _tuples(adds[t], cols))
                        continue
                    blanks = ", ".join(["''"] * (len(cols) - len(key)))
                    conn.executemany(f"INSERT OR REPLACE INTO {t}_overlay VALUES "
                                     f"({', '.join('?' * len(key))}, {blanks}, 1)", removals[t])
                    conn.executemany(f"INSERT OR REPLACE INTO {t}_overlay VALUES "
                                     "(?, ?, ?, ?, 0)", _tuples(adds[t], cols))
                if artifacts is not None:
                    conn.execute("DELETE FROM artifacts")
                    for name, (digest, body) in artifacts.items():
                        conn.execute("INSERT INTO artifacts VALUES (?, ?, ?)",
                                     (name, digest, body))
                if info is not None:
                    _write_info(conn, info)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
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


# ------------------------------------------------------------------------- generations
_ENT_COLS = ("holder_key", "name", "valid_from", "valid_until")
_HOT_COLS = ("key", "kind", "reason", "listed")
_TABLES = (("entitlements", ("holder_key", "name"), _ENT_COLS),
           ("hotlist", ("key",), _HOT_COLS))
"""The two policy tables: name, primary key, columns (the overlay adds ``removed``)."""


def _tuples(rows: Iterable[Mapping[str, Any] | Sequence[Any]], cols: tuple[str, ...]
            ) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        if isinstance(r, Mapping):
            yield tuple(r.get(c) for c in cols)
        else:
            yield tuple(r)


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
        for t, key, cols in _TABLES:
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


def _write_info(conn: sqlite3.Connection, info: PolicyInfo) -> None:
    conn.execute("INSERT OR REPLACE INTO policy VALUES (1, ?, ?, ?, ?, "
                 "strftime('%Y-%m-%dT%H:%M:%SZ','now'))",
                 (info.channel, info.version, info.hash, info.expires))


def _pointer(base: Path) -> Path:
    return base.with_name(base.name + ".current")


def active_generation(base: str | Path) -> Path:
    """The file holding the current data of the store ``base`` (``base`` itself when no
    generation switch has happened). Raises :class:`StoreError` if the pointer names a
    file that does not exist."""
    base = Path(base)
    ptr = _pointer(base)
    try:
        name = ptr.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return base
    gen = base.with_name(name)
    if not name or "/" in name or not gen.exists():
        raise StoreError(f"{ptr} names a missing generation {name!r}; restore it or "
                         "remove the pointer to fall back to " + base.name)
    return gen


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Generation(NamedTuple):
    """A generation file built by :func:`build_generation` and the rows it holds."""

    path: Path
    counts: dict[str, int]          # rows inserted per table: entitlements, hotlist


def build_generation(
    base: str | Path,
    *,
    entitlements: Iterable[Sequence[Any]],
    hotlist: Iterable[Sequence[Any]],
    info: PolicyInfo,
    artifacts: Mapping[str, tuple[str, bytes]] | None = None,
    batch_size: int = 20_000,
    progress: Callable[[str, int], None] | None = None,
) -> Generation:
    """Load a complete snapshot into a NEW generation file next to ``base``; return it
    with the number of rows inserted into each table (no second counting pass).

    Rows are tuples in column order, streamed in batches of ``batch_size`` (memory stays
    bounded: a few MiB whatever the size; sorted input loads fastest). The file is built
    without a journal (nothing reads it yet), fsynced, switched to WAL and renamed from
    ``*.staging`` to its final name. It is not current until :func:`switch_generation`.
    ``progress(table, rows_so_far)`` is called after each batch. Raises ``sqlite3.Error``
    (e.g. duplicate keys, full disk); the staging file is then removed.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    final = base.with_name(f"{base.name}.g{info.version}-{secrets.token_hex(4)}")
    staging = final.with_name(final.name + ".staging")
    conn = sqlite3.connect(staging, isolation_level=None)
    counts: dict[str, int] = {}
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-16384")   # 16 MiB
        PolicyStore.migrate(sqlite_utils.Database(conn))
        conn.execute("BEGIN")
        for table, rows in (("entitlements", entitlements), ("hotlist", hotlist)):
            n = 0
            batch: list[Sequence[Any]] = []
            sql = f"INSERT INTO {table} VALUES (?, ?, ?, ?)"
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_size:
                    conn.executemany(sql, batch)
                    n += len(batch)
                    batch.clear()
                    if progress:
                        progress(table, n)
            conn.executemany(sql, batch)
            n += len(batch)
            counts[table] = n
            if progress:
                progress(table, n)
        for name, (digest, body) in (artifacts or {}).items():
            conn.execute("INSERT INTO artifacts VALUES (?, ?, ?)", (name, digest, body))
        _write_info(conn, info)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, final)
        _fsync_dir(final.parent)
    except BaseException:
        conn.close()
        staging.unlink(missing_ok=True)
        raise
    return Generation(final, counts)


def switch_generation(base: str | Path, generation: Path) -> None:
    """Make ``generation`` current: write the pointer atomically (temp file, fsync, rename,
    fsync the directory). A crash leaves either the old or the new pointer."""
    base = Path(base)
    ptr = _pointer(base)
    tmp = ptr.with_name(ptr.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(generation.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ptr)
    _fsync_dir(ptr.parent)


def _collect_garbage(base: Path, keep: Path) -> list[Path]:
    removed = []
    candidates = [f for f in base.parent.glob(base.name + ".g*")
                  if not f.name.endswith(("-wal", "-shm", "-journal"))]
    if keep != base:
        candidates.append(base)
    for f in candidates:
        if f == keep:
            continue
        for p in (f, f.with_name(f.name + "-wal"), f.with_name(f.name + "-shm"),
                  f.with_name(f.name + "-journal")):
            if p.exists():
                p.unlink()
                removed.append(p)
    tmp = _pointer(base).with_name(_pointer(base).name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    return removed
