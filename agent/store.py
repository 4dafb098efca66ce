"""The local policy store: entitlements, hotlist and the applied policy's identity (SQLite).

Keys are pseudonymous (keyed hashes, see :mod:`agent.pseudonym`): the store never holds
a raw 社会保障号码, card number or name.

* ``entitlements(holder_key, name, valid_from, valid_until)`` — what a holder is entitled
  to: categories (``elderly``, ``disabled``, ``youfu``, ``student``) and products such as
  pre-booked tickets (``ticket:taishan``), each with inclusive ISO validity dates.
* ``hotlist(key, kind, reason, listed)`` — lost/stolen cards (``kind = "card"``, key =
  credential key) and blocked holders (``kind = "holder"``).
* ``policy`` — the channel, version, hash and expiry of the applied bundle.

Schema changes are migrations (``MIGRATIONS``), tracked in ``PRAGMA user_version``.
Reads on the tap path use one connection with a lock; bulk writes (policy apply) use
their own connection and one transaction, which WAL lets run beside the readers, so taps
never pause for an apply.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import sqlite_utils

__all__ = ["MIGRATIONS", "PolicyInfo", "PolicyStore", "StoreError"]


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


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_m1_initial, _m2_without_rowid]
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
        self._conn = self._connect()
        self.migrate(sqlite_utils.Database(self._conn))
        self._info = self._read_info()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
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
                f"SELECT coalesce(reason, 'listed') FROM hotlist WHERE key IN ({marks}) LIMIT 1",
                keys).fetchone()
        return None if row is None else str(row[0])

    def entitlements(self, holder_key: str, on: date) -> frozenset[str]:
        """Names the holder is entitled to on ``on`` (validity dates inclusive)."""
        if not holder_key:
            return frozenset()
        day = on.isoformat()
        with self._lock:
            rows = self._conn.execute(
                "SELECT name FROM entitlements WHERE holder_key = ? "
                "AND (valid_from IS NULL OR valid_from = '' OR valid_from <= ?) "
                "AND (valid_until IS NULL OR valid_until = '' OR valid_until >= ?)",
                (holder_key, day, day)).fetchall()
        return frozenset(r[0] for r in rows)

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def _read_info(self) -> PolicyInfo:
        row = self._conn.execute(
            "SELECT channel, version, hash, expires FROM policy WHERE id = 1").fetchone()
        return PolicyInfo(*row) if row else PolicyInfo()

    def counts(self) -> dict[str, int]:
        """Row counts: entitlements, hotlist."""
        with self._lock:
            return {t: int(self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                    for t in ("entitlements", "hotlist")}

    # -- bulk writes (policy apply, demo seeding) ---------------------------------------
    def apply(
        self,
        *,
        entitlements: Iterable[Mapping[str, Any]] = (),
        remove_entitlements: Iterable[tuple[str, str]] = (),
        hotlist: Iterable[Mapping[str, Any]] = (),
        remove_hotlist: Iterable[str] = (),
        replace: bool = False,
        info: PolicyInfo | None = None,
        batch_size: int = 10_000,
    ) -> None:
        """Apply changes in ONE transaction on a separate connection: all or nothing.

        ``entitlements`` rows have ``holder_key, name, valid_from, valid_until``;
        ``hotlist`` rows have ``key, kind, reason, listed``. ``replace`` clears both tables
        first (a snapshot). Readers keep seeing the old state until the commit.
        """
        conn = self._connect()
        try:
            db = sqlite_utils.Database(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                if replace:
                    conn.execute("DELETE FROM entitlements")
                    conn.execute("DELETE FROM hotlist")
                conn.executemany("DELETE FROM entitlements WHERE holder_key = ? AND name = ?",
                                 list(remove_entitlements))
                conn.executemany("DELETE FROM hotlist WHERE key = ?",
                                 [(k,) for k in remove_hotlist])
                db["entitlements"].insert_all(  # type: ignore[union-attr]
                    entitlements, replace=True, batch_size=batch_size)
                db["hotlist"].insert_all(  # type: ignore[union-attr]
                    hotlist, replace=True, batch_size=batch_size)
                if info is not None:
                    conn.execute("INSERT OR REPLACE INTO policy VALUES (1, ?, ?, ?, ?, "
                                 "strftime('%Y-%m-%dT%H:%M:%SZ','now'))",
                                 (info.channel, info.version, info.hash, info.expires))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        with self._lock:
            self._info = self._read_info()

    def close(self) -> None:
        """Close the reader connection. Safe twice."""
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
