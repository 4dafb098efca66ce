"""The hourly rollup behind the hub's reports (``report_hourly``), kept in the hub store.

Every stored record adds one to a row of ``report_hourly``, keyed by the terminal, the
UTC hour of the record's ``time`` and the record's settlement dimensions (kind, product,
category, reason, decision, route, site, operator), in the **same transaction** as the
record itself (the stores call :func:`add_sqlite` / :func:`add_pg` from their ingest), so
the rollup always equals the records table. Reports then group at most one row per hour
and combination instead of millions of records: 10 million records in a month are a few
hundred thousand rollup rows (``bench/bench_report.py``).

What a record contributes is :func:`contribution` — one function, used for the ingest,
the backfill of a store that has records from before the rollup existed, and documented
in ``docs/hub.md`` so an auditor can recompute every figure from ``ykt hub export``:

* ``kind``: ``decision`` for a decision, else the body's ``event`` (``passed`` counts a
  person who went through a gate, ``docs/protocol.md`` §1.4);
* ``decision``: ``accepted`` / ``denied`` for decisions, ``event`` for events, and
  ``undone`` for an event with ``undo`` (a ``not_entered`` after an accepted entry that
  took fen or was a concession): its product and category, with ``amount``, ``fare_std``
  and ``claim`` negated, so sums net out what was never used;
* ``amount``: the fen taken (accepted decisions); ``fare_std``: the standard fare a
  concession replaced; ``claim``: ``fare_std − amount`` of a concession (the subsidy);
* ``category``: the concession category, ``""`` for a full-fare ride, and
  :data:`UNKNOWN` for an accepted decision journaled before terminals recorded it (such a
  record also counts in ``missing``: its fare and claim are unknown, reported as 0).

Hours are UTC hours (epoch seconds // 3600): days and months of any timezone whose UTC
offset is a whole number of hours (Asia/Shanghai) are exact sums of them.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Iterable
from typing import Any

from agent.journal import parse_utc
from sync.hub.chain import IncomingRecord

__all__ = ["DIMENSIONS", "MEASURES", "UNKNOWN", "add_pg", "add_sqlite", "contribution",
           "ensure_pg", "ensure_sqlite"]

log = logging.getLogger(__name__)

UNKNOWN = "(unknown)"
"""Category of an accepted decision journaled without settlement fields (older terminals)."""

DIMENSIONS = ("kind", "product", "category", "reason", "decision", "route", "site", "operator")
"""The rollup's key besides ``terminal`` and ``hour``, in column order."""

MEASURES = ("n", "amount", "fare_std", "claim", "missing")
"""Summed per key: records, fen taken, standard fares replaced, claims, records missing
the settlement fields."""

_META_KEY = "report_rollup"
_COLS = ("terminal", "hour", *DIMENSIONS, *MEASURES)

_DDL = """
CREATE TABLE IF NOT EXISTS report_hourly (
    terminal TEXT NOT NULL, hour BIGINT NOT NULL, kind TEXT NOT NULL, product TEXT NOT NULL,
    category TEXT NOT NULL, reason TEXT NOT NULL, decision TEXT NOT NULL,
    route TEXT NOT NULL, site TEXT NOT NULL, operator TEXT NOT NULL,
    n BIGINT NOT NULL, amount BIGINT NOT NULL, fare_std BIGINT NOT NULL,
    claim BIGINT NOT NULL, missing BIGINT NOT NULL,
    PRIMARY KEY (hour, terminal, kind, product, category, reason, decision, route, site,
                 operator)
){without_rowid}
"""
# hour first: a period is one range of the key (in SQLite, of the table itself: reading a
# month through a separate index on hour took 3x as long as through this key)

_KEY = "hour, terminal, " + ", ".join(DIMENSIONS)
_UPSERT = (f"INSERT INTO report_hourly ({', '.join(_COLS)}) VALUES "
           f"({', '.join(['{p}'] * len(_COLS))}) ON CONFLICT ({_KEY}) DO UPDATE SET "
           + ", ".join(f"{m}=report_hourly.{m}+excluded.{m}" for m in MEASURES))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@functools.lru_cache(maxsize=4096)
def _utc_hour(prefix: str) -> int:
    """The hour number of a UTC stamp's ``YYYY-MM-DDTHH`` (cached: a batch shares a few)."""
    return int(parse_utc(prefix + ":00:00Z") // 3600)


def contribution(body: dict[str, Any]) -> tuple[tuple[int, *tuple[str, ...]],
                                                 tuple[int, int, int, int, int]]:
    """``(hour, *DIMENSIONS), (n, amount, fare_std, claim, missing)`` of one record body.

    Never raises: a body without a readable ``time`` counts in hour 0 (1970-01-01 UTC)."""
    try:
        stamp = body["time"]
        hour = (_utc_hour(stamp[:13]) if isinstance(stamp, str) and stamp.endswith("Z")
                and stamp[10:11] == "T" else int(parse_utc(stamp) // 3600))
    except (KeyError, ValueError, TypeError, OverflowError):
        hour = 0
    dec = body.get("decision") if isinstance(body.get("decision"), dict) else None
    src: dict[str, Any] = dec if dec is not None else body
    product, reason = _text(src.get("product")), _text(src.get("reason"))
    loc = body.get("loc", body.get("location"))
    loc = loc if isinstance(loc, dict) else {}
    route, site, operator = (_text(loc.get(k)) for k in ("route", "site", "operator"))
    event = body.get("event")
    amount = fare_std = claim = missing = 0
    category = ""
    undo = body.get("undo")
    if event is not None and isinstance(undo, dict):   # an entry not made, taken back
        kind, decision = _text(event), "undone"
        product, reason = _text(undo.get("product")), "accepted"
        category = _text(undo.get("category"))
        amount = -_int(undo.get("amount"))
        if category:
            fare_std = -_int(undo.get("fare_std"))
            claim = fare_std - amount
    elif event is not None:
        kind, decision = _text(event), "event"
    else:
        kind = "decision"
        accepted = body.get("accepted")
        if not isinstance(accepted, bool):      # the protocol's example form
            accepted = reason in ("accepted", "already_paid")
        decision = "accepted" if accepted else "denied"
        if accepted:
            amount = _int(src.get("amount", src.get("amount_cents")))
            if "category" in body:
                category = _text(body.get("category"))
                if category:
                    fare_std = _int(body.get("fare_std"))
                    claim = fare_std - amount
            else:
                category, missing = UNKNOWN, 1
    return ((hour, kind, product, category, reason, decision, route, site, operator),
            (1, amount, fare_std, claim, missing))


def accumulate(acc: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...],
               values: Iterable[int]) -> None:
    """Add one record's ``values`` to the sums of its rollup ``key`` in ``acc``."""
    sums = acc.get(key)
    if sums is None:
        acc[key] = list(values)
    else:
        for i, v in enumerate(values):
            sums[i] += v


def _aggregate(terminal: str, bodies: Iterable[dict[str, Any]]
               ) -> list[tuple[Any, ...]]:
    acc: dict[tuple[Any, ...], list[int]] = {}
    for body in bodies:
        accumulate(acc, *contribution(body))
    return [(terminal, *k, *v) for k, v in acc.items()]


def add_sqlite(db: sqlite3.Connection, terminal: str, records: Iterable[IncomingRecord]
               ) -> None:
    """Add newly stored ``records`` of ``terminal`` to the rollup (inside the caller's
    transaction)."""
    rows = _aggregate(terminal, (r.body for r in records))
    if rows:
        db.executemany(_UPSERT.format(p="?"), rows)


def add_pg(conn: Any, terminal: str, records: Iterable[IncomingRecord]) -> None:
    """:func:`add_sqlite` for a ``psycopg`` connection (inside its transaction)."""
    rows = _aggregate(terminal, (r.body for r in records))
    if rows:
        with conn.cursor() as cur:
            cur.executemany(_UPSERT.format(p="%s"), rows)


def _backfill(rows: Iterable[tuple[str, str]], write: Any, what: str) -> int:
    """Aggregate ``(terminal, body text)`` rows into the rollup through ``write(rows)``
    (in chunks, to bound memory); returns the number of records."""
    acc: dict[tuple[Any, ...], list[int]] = {}
    count = 0
    for terminal, text in rows:
        try:
            body = json.loads(text)
        except ValueError:
            body = {}
        key, values = contribution(body if isinstance(body, dict) else {})
        accumulate(acc, (terminal, *key), values)
        count += 1
        if len(acc) >= 200_000:
            write([(*k, *v) for k, v in acc.items()])
            acc.clear()
    if acc:
        write([(*k, *v) for k, v in acc.items()])
    if count:
        log.info("%s: report rollup built from %d stored records", what, count)
    return count


def ensure_sqlite(db: sqlite3.Connection, what: str) -> None:
    """Create the rollup in a SQLite hub store and, the first time, build it from the
    records already stored (inside the caller's write transaction)."""
    db.execute(_DDL.format(without_rowid=" WITHOUT ROWID"))
    if db.execute("SELECT 1 FROM hub_meta WHERE key=?", (_META_KEY,)).fetchone() is None:
        db.execute("DELETE FROM report_hourly")
        _backfill(db.execute("SELECT terminal, body FROM records"),
                  lambda rows: db.executemany(_UPSERT.format(p="?"), rows), what)
        db.execute("INSERT INTO hub_meta VALUES (?, 'built')", (_META_KEY,))


PG_DDL = _DDL.format(without_rowid="").replace("TEXT", 'text COLLATE "C"')
"""The PostgreSQL store's migration to schema 3 (the rollup is filled by :func:`ensure_pg`)."""


def ensure_pg(conn: Any, what: str) -> None:
    """Build the rollup of a PostgreSQL hub store from its records the first time (inside
    the caller's migration transaction; other hubs' inserts wait meanwhile)."""
    if conn.execute("SELECT 1 FROM hub_meta WHERE key=%s", (_META_KEY,)).fetchone():
        return
    conn.execute("LOCK TABLE records IN SHARE MODE")
    conn.execute("DELETE FROM report_hourly")

    def write(rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(_UPSERT.format(p="%s"), rows)

    with conn.cursor(name="ykt_rollup_backfill") as cur:
        cur.itersize = 20000
        cur.execute("SELECT terminal, body FROM records")
        _backfill(cur, write, what)
    conn.execute("INSERT INTO hub_meta VALUES (%s, 'built')", (_META_KEY,))
