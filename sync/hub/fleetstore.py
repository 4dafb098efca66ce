"""What the hub knows about each terminal for ``ykt hub fleet``, in the hub's own database
(SQLite file or PostgreSQL, the same ``--db``), beside the records.

Three tables, the same SQL on both databases (times are seconds since the epoch, by the
hub's clock, as ``REAL``/``double precision``):

* ``fleet_terminals``: the last status a terminal sent while online (kept when its last
  will says ``offline``: policy, outbox, clock and alarms stay known), whether it is
  online, since when it is offline, and the freshest outbox reading from a command result;
* ``fleet_clock``: the last round-trip clock measurement (offset, error = RTT/2, RTT, when,
  which hub instance measured it);
* ``fleet_policy``: the latest manifest version seen published per channel (with its
  expiry and when it first appeared), from the retained ``ykt/v1/policy/{channel}/manifest``.

:func:`open_fleet_store` opens it from ``--db``; :meth:`FleetStore.snapshot` is what
:func:`sync.hub.fleet.fleet_rows` reads. Every method may raise ``sqlite3.Error`` /
``psycopg.Error``; a missing database for a read-only open is ``FileNotFoundError``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FleetSnapshot", "FleetStore", "open_fleet_store"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fleet_terminals (terminal TEXT PRIMARY KEY, "
    "online INTEGER NOT NULL DEFAULT 0, status TEXT, status_at REAL, offline_since REAL, "
    "reading TEXT, reading_at REAL)",
    "CREATE TABLE IF NOT EXISTS fleet_clock (terminal TEXT PRIMARY KEY, "
    "offset_us BIGINT NOT NULL, error_us BIGINT NOT NULL, rtt_us BIGINT NOT NULL, "
    "measured_at REAL NOT NULL, hub TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_policy (channel TEXT PRIMARY KEY, "
    "version BIGINT NOT NULL, expires TEXT NOT NULL, seen_at REAL NOT NULL)",
)


@dataclass
class FleetSnapshot:
    """One consistent read: per terminal its ``fleet_terminals`` and ``fleet_clock`` row
    as dicts (``status``/``reading`` parsed), and per channel the latest published
    ``version``/``expires``/``seen_at``."""

    terminals: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)


class FleetStore:
    """The fleet tables over a DB-API connection made by ``connect``; ``pg`` selects
    PostgreSQL (``%s`` placeholders, one reconnect and retry after a lost connection —
    every write here is idempotent). Thread-safe (one lock around the connection)."""

    def __init__(self, connect: Callable[[], Any], *, pg: bool) -> None:
        self._connect = connect
        self._db = connect()
        self._pg = pg
        self._lock = threading.Lock()
        if pg:          # hubs starting together on one database: one creates the tables
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(7311003)")
                for stmt in _SCHEMA:
                    self._db.execute(stmt.replace("REAL", "double precision"))
        else:
            for stmt in _SCHEMA:
                self._run(stmt)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if not self._pg:
            with self._lock:
                cur = self._db.execute(sql, tuple(params))
                rows = list(cur.fetchall()) if cur.description is not None else []
                self._db.commit()
            return rows
        import psycopg

        sql = sql.replace("?", "%s")
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._db.closed or self._db.broken:
                        self._db = self._connect()
                    cur = self._db.execute(sql, tuple(params))
                    return list(cur.fetchall()) if cur.description is not None else []
                except psycopg.OperationalError:
                    if attempt == 2:
                        raise
                    self._db.close()
        raise AssertionError("unreachable")

    def record_status(self, terminal: str, status: dict[str, Any], now: float) -> None:
        """A status heartbeat arrived at ``now``: an ``offline`` one (the last will) only
        marks the terminal offline; any other replaces its last known status."""
        if status.get("state") == "offline":
            self._run("INSERT INTO fleet_terminals (terminal, online, offline_since) "
                      "VALUES (?, 0, ?) ON CONFLICT (terminal) DO UPDATE SET online=0, "
                      "offline_since=coalesce(fleet_terminals.offline_since, "
                      "excluded.offline_since)", (terminal, now))
            return
        text = json.dumps(status, separators=(",", ":"), ensure_ascii=False)
        self._run("INSERT INTO fleet_terminals (terminal, online, status, status_at) "
                  "VALUES (?, 1, ?, ?) ON CONFLICT (terminal) DO UPDATE SET online=1, "
                  "status=excluded.status, status_at=excluded.status_at, "
                  "offline_since=NULL", (terminal, text.replace("\x00", "\\0"), now))

    def record_reading(self, terminal: str, reading: dict[str, Any], now: float) -> None:
        """Outbox and clock fields a command result carried, received at ``now``."""
        text = json.dumps(reading, separators=(",", ":"), ensure_ascii=False)
        self._run("INSERT INTO fleet_terminals (terminal, reading, reading_at) VALUES "
                  "(?, ?, ?) ON CONFLICT (terminal) DO UPDATE SET reading=excluded.reading, "
                  "reading_at=excluded.reading_at", (terminal, text, now))

    def record_clock(self, terminal: str, offset_us: int, error_us: int, rtt_us: int,
                     measured_at: float, hub: str) -> None:
        """A round-trip measurement (µs; ``measured_at`` in s by the hub's clock)."""
        self._run("INSERT INTO fleet_clock VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (terminal) "
                  "DO UPDATE SET offset_us=excluded.offset_us, error_us=excluded.error_us, "
                  "rtt_us=excluded.rtt_us, measured_at=excluded.measured_at, "
                  "hub=excluded.hub", (terminal, offset_us, error_us, rtt_us, measured_at,
                                       hub))

    def record_manifest(self, channel: str, version: int, expires: str, now: float) -> None:
        """A manifest of ``channel`` was seen published at ``now``; only a higher version
        replaces the stored one (so ``seen_at`` is when the latest version first
        appeared, not when a restarted hub saw the retained copy again)."""
        self._run("INSERT INTO fleet_policy VALUES (?, ?, ?, ?) ON CONFLICT (channel) DO "
                  "UPDATE SET version=excluded.version, expires=excluded.expires, "
                  "seen_at=excluded.seen_at WHERE excluded.version > fleet_policy.version",
                  (channel, version, expires, now))

    def snapshot(self) -> FleetSnapshot:
        """Everything :func:`~sync.hub.fleet.fleet_rows` needs."""
        snap = FleetSnapshot()
        for (t, online, status, status_at, off, reading, reading_at) in self._run(
                "SELECT terminal, online, status, status_at, offline_since, reading, "
                "reading_at FROM fleet_terminals ORDER BY terminal"):
            snap.terminals[t] = {"online": bool(online),
                                 "status": json.loads(status) if status else None,
                                 "status_at": status_at, "offline_since": off,
                                 "reading": json.loads(reading) if reading else None,
                                 "reading_at": reading_at, "clock": None}
        for (t, off_us, err_us, rtt_us, at, hub) in self._run(
                "SELECT terminal, offset_us, error_us, rtt_us, measured_at, hub "
                "FROM fleet_clock"):
            snap.terminals.setdefault(t, {"online": False, "status": None, "status_at": None,
                                          "offline_since": None, "reading": None,
                                          "reading_at": None})["clock"] = {
                "offset_us": int(off_us), "error_us": int(err_us), "rtt_us": int(rtt_us),
                "measured_at": float(at), "hub": hub}
        for (ch, version, expires, seen) in self._run(
                "SELECT channel, version, expires, seen_at FROM fleet_policy"):
            snap.policies[ch] = {"version": int(version), "expires": expires,
                                 "seen_at": float(seen)}
        return snap

    def close(self) -> None:
        """Release the connection. Safe to call twice."""
        with self._lock:
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - closing a broken connection is not an error
                pass


def open_fleet_store(db: Path | str, *, create: bool = True) -> FleetStore:
    """The fleet tables in ``db`` (a SQLite ``Path`` or a PostgreSQL URL), created if
    missing. ``create`` False refuses a SQLite file that does not exist
    (``FileNotFoundError``)."""
    if isinstance(db, Path):
        if not create and not db.exists():
            raise FileNotFoundError(f"{db}: no such hub database")
        path = db

        def connect_sqlite() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            return conn

        return FleetStore(connect_sqlite, pg=False)
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(db)
    params.setdefault("application_name", "ykt-hub-fleet")
    params.setdefault("connect_timeout", "10")
    info = make_conninfo("", **params)
    try:
        return FleetStore(lambda: psycopg.connect(info, autocommit=True), pg=True)
    except psycopg.OperationalError as err:
        from sync.hub.pgstore import redact_dsn
        raise OSError(f"PostgreSQL {redact_dsn(db)}: cannot open the fleet tables: "
                      f"{str(err).strip()}") from err
