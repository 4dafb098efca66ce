"""Hub stores written before incarnations (SQLite schema 1, PostgreSQL ``hub_schema`` 1)
migrate on open: every record and chain moves to the legacy epoch ``""``, the chain goes
on where it stopped, the store gets an id, and a v2 epoch is a chain of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from sync.hub.pgstore import _MIGRATIONS, SCHEMA_VERSION, PgHubStore
from sync.hub.reports import build_report
from sync.hub.service import parse_batch
from sync.hub.store import HubStore, SqliteHubStore
from tests.test_hub_process import chain

V1_SQLITE = """
CREATE TABLE records (
    terminal TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, body TEXT NOT NULL,
    product TEXT NOT NULL, reason TEXT NOT NULL, flagged INTEGER NOT NULL DEFAULT 0,
    received REAL NOT NULL, PRIMARY KEY (terminal, seq)) WITHOUT ROWID;
CREATE TABLE terminals (
    terminal TEXT PRIMARY KEY, contiguous_seq INTEGER NOT NULL DEFAULT 0,
    contiguous_hash TEXT NOT NULL, batches INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
    last_seen REAL, status TEXT, status_at REAL) WITHOUT ROWID;
CREATE TABLE chain_breaks (id INTEGER PRIMARY KEY, terminal TEXT NOT NULL,
    seq INTEGER NOT NULL, problem TEXT NOT NULL, detected REAL NOT NULL);
CREATE TABLE rejects (terminal TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL,
    last_detail TEXT NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (terminal, kind)) WITHOUT ROWID;
"""

ROWS = chain("bus-1", 5)


def v1_rows() -> list[tuple[str, int, str, str, str, str, float]]:
    return [("bus-1", s, h, b, "standard", "accepted", 1.0) for s, b, h in ROWS[:3]]


def records(rows: list[tuple[int, str, str]]):  # type: ignore[no-untyped-def]
    return parse_batch("bus-1", ('{"v":1,"terminal":"bus-1","records":[' + ",".join(
        f'{{"seq":{s},"body":{b},"hash":"{h}"}}' for s, b, h in rows) + "]}").encode()).records


def check_migrated(store: HubStore) -> None:
    assert len(store.store_id) == 32
    assert store.contiguous_seq("bus-1", "") == 3
    result = store.ingest("bus-1", records(ROWS[3:]))  # the v1 chain goes on
    assert (result.contiguous_seq, result.breaks) == (5, 0)
    v2 = store.ingest("bus-1", records(chain("bus-1", 2)), "0a" * 16, "c2ln")
    assert (v2.contiguous_seq, v2.stored, v2.duplicates) == (2, 2, 0)  # its own chain
    lines = list(store.export())
    assert len(lines) == 7 and sum('"epoch":""' in x for x in lines) == 5
    assert sum('"sig":"c2ln"' in x for x in lines) == 1
    rep = store.report()
    assert rep["totals"]["chain_breaks"] == 0
    assert sorted((i["epoch"], i["contiguous_seq"]) for i in
                  rep["terminals"]["bus-1"]["incarnations"]) == [("", 5), ("0a" * 16, 2)]
    # the reports' rollup was built from the records stored before it existed
    assert build_report(store, group_by=["terminal"]).totals["records"] == 7
    first_id = store.store_id
    assert store.reincarnate() != first_id


def test_sqlite_schema_1_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(V1_SQLITE)
        conn.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,0,?)", v1_rows())
        conn.execute("INSERT INTO terminals VALUES ('bus-1', 3, ?, 1, 3, 0, 1.0, NULL, NULL)",
                     (ROWS[2][2],))
    store = SqliteHubStore(db)
    try:
        check_migrated(store)
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)


def test_postgres_schema_1_is_migrated(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hub_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO hub_schema VALUES (1)")
        conn.execute(_MIGRATIONS[0][1])
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO records (terminal, seq, hash, body, product, reason) "
                            "VALUES (%s, %s, %s, %s, %s, %s)", [r[:6] for r in v1_rows()])
        conn.execute("INSERT INTO terminals (terminal, contiguous_seq, contiguous_hash, "
                     "batches, records, last_seen) VALUES ('bus-1', 3, %s, 1, 3, now())",
                     (ROWS[2][2],))
    store = PgHubStore(pg_dsn)
    try:
        check_migrated(store)
    finally:
        store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM hub_schema").fetchall() == [(SCHEMA_VERSION,)]
