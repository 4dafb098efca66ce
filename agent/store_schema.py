"""The policy store's schema: tables, migrations, the applied policy's identity.

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
  into the two big tables, each with ``removed`` (1 = the delta removes that key).

Schema changes are migrations (:data:`MIGRATIONS`), tracked in ``PRAGMA user_version``;
:func:`migrate` applies the pending ones. The reader and writer live in
:mod:`agent.store`, generation files in :mod:`agent.store_generations`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.errors import YktError

__all__ = ["MIGRATIONS", "TABLES", "PolicyInfo", "StoreError", "connect", "migrate",
           "read_info", "row_tuples", "write_info"]


class StoreError(YktError, RuntimeError):
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


def migrate(db: sqlite_utils.Database) -> int:
    """Apply pending migrations; return the schema version. Raises :class:`StoreError` if
    the file's schema is newer than this software knows."""
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


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection to the store file ``path`` as every user of the store opens it:
    autocommit (transactions are explicit), WAL, ``synchronous=FULL``, an 8 MiB page
    cache (bounded memory on a Pi), 30 s busy timeout."""
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-8192")  # 8 MiB: bounded memory on a Pi
    return conn


def read_info(conn: sqlite3.Connection) -> PolicyInfo:
    """The applied policy's identity as ``conn`` sees it (:class:`PolicyInfo` () if none)."""
    row = conn.execute("SELECT channel, version, hash, expires FROM policy WHERE id = 1"
                       ).fetchone()
    return PolicyInfo(*row) if row else PolicyInfo()


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


ENT_COLS = ("holder_key", "name", "valid_from", "valid_until")
HOT_COLS = ("key", "kind", "reason", "listed")
TABLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("entitlements", ("holder_key", "name"), ENT_COLS),
    ("hotlist", ("key",), HOT_COLS))
"""The two policy tables: name, primary key, columns (the overlay adds ``removed``)."""


def row_tuples(rows: Iterable[Mapping[str, Any] | Sequence[Any]], cols: tuple[str, ...]
               ) -> Iterator[tuple[Any, ...]]:
    """``rows`` as tuples in ``cols`` order (a mapping is read by column name)."""
    for r in rows:
        if isinstance(r, Mapping):
            yield tuple(r.get(c) for c in cols)
        else:
            yield tuple(r)


def write_info(conn: sqlite3.Connection, info: PolicyInfo) -> None:
    """Record ``info`` as the applied policy (inside the caller's transaction)."""
    conn.execute("INSERT OR REPLACE INTO policy VALUES (1, ?, ?, ?, ?, "
                 "strftime('%Y-%m-%dT%H:%M:%SZ','now'))",
                 (info.channel, info.version, info.hash, info.expires))
