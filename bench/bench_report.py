"""Settlement report over millions of records: SQLite and PostgreSQL (issue 12).

Run: ``.venv/bin/python -m bench.bench_report [--records 10000000] [--terminals 200]
[--pg postgresql://postgres@HOST:PORT/postgres] [--no-readme]``

A month (October 2026, Beijing time) of bus records of ``--terminals`` validators on 50
routes of 5 operators is generated as record bodies like the engine writes them (a mix
of full fares, student halves, elderly/disabled/优抚 free rides and refusals), and each
body goes through :func:`sync.hub.report_rollup.contribution` — the code the hub's ingest
and backfill use — into the hourly rollup, which is written to a SQLite hub store and to
a PostgreSQL one (``COPY``). The record bodies themselves are not stored: the reports
never read them (the ingest cost of keeping the rollup is in ``bench_hub_pg``'s numbers).
Then, on each backend, timed twice (first and second run):

* the settlement statement of the month for every operator (category × route);
* the same for one operator;
* a statistics report by day × route × category for the month.

PostgreSQL is ``--pg``, or a throw-away durable cluster made for the run. Writes its table
to ``bench/README.md`` (section ``report``) unless ``--no-readme``.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.report import machine, table, update_section
from simulator.postgres import PgCluster, PgUnavailable, with_database, with_search_path
from sync.hub.pgstore import PgHubStore
from sync.hub.report_rollup import DIMENSIONS, MEASURES, accumulate, contribution
from sync.hub.reports import build_report, settlement_statement
from sync.hub.store import HubStore, SqliteHubStore

OPERATORS = ["青岛公交一公司", "交运集团", "真情巴士", "城运控股", "西海岸公交"]
PRODUCTS = [  # (weight, product, reason, amount, category)
    (50, "standard", "accepted", 200, ""), (8, "student_half", "accepted", 100, "student"),
    (20, "elderly_free", "accepted", 0, "elderly"), (4, "disabled_free", "accepted", 0,
                                                     "disabled"),
    (3, "youfu_free", "accepted", 0, "youfu"), (5, "repeat", "already_paid", 0, ""),
    (3, "", "hotlisted", 0, None), (2, "", "expired", 0, None),
]
START = datetime(2026, 9, 30, 16, tzinfo=UTC).timestamp()   # 2026-10-01 00:00 Beijing
SECONDS = 31 * 86400


def bodies(n: int, terminals: int, seed: int = 1) -> Any:
    """``n`` record bodies (dicts) of a month, spread over ``terminals`` buses."""
    rng = random.Random(seed)
    weights = [p[0] for p in PRODUCTS]
    locs = [{"route": f"{t % 50 + 1}路", "vehicle": f"鲁B-{t:05d}",
             "operator": OPERATORS[t % 50 % len(OPERATORS)]} for t in range(terminals)]
    stamps = [datetime.fromtimestamp(START + m * 60, UTC).strftime("%Y-%m-%dT%H:%M:00.000Z")
              for m in range(SECONDS // 60)]
    choices = rng.choices(range(len(PRODUCTS)), weights, k=min(n, 1_000_000))
    for i in range(n):
        t = i % terminals
        _, product, reason, amount, category = PRODUCTS[choices[i % len(choices)]]
        body: dict[str, Any] = {"time": stamps[(i * 7919) % len(stamps)], "loc": locs[t],
                                "reason": reason, "product": product, "amount": amount,
                                "accepted": category is not None}
        if category is not None:
            body["category"] = category
            if category:
                body["fare_std"] = 200
        yield f"BUS-{t:05d}", body


def rollup_rows(n: int, terminals: int) -> list[tuple[Any, ...]]:
    acc: dict[tuple[Any, ...], list[int]] = {}
    for terminal, body in bodies(n, terminals):
        key, values = contribution(body)
        accumulate(acc, (terminal, *key), values)
    return [(*k, *v) for k, v in acc.items()]


COLS = ("terminal", "hour", *DIMENSIONS, *MEASURES)


def load_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> SqliteHubStore:
    SqliteHubStore(path).close()     # the schema and the rollup table
    rows.sort(key=lambda r: (r[1], r[0]))      # in key order (hour, terminal): a fast load
    db = sqlite3.connect(path)
    with db:
        db.executemany(f"INSERT INTO report_hourly ({', '.join(COLS)}) VALUES "
                       f"({', '.join('?' * len(COLS))})", rows)
    db.execute("ANALYZE")
    db.close()
    return SqliteHubStore(path)


def load_pg(url: str, rows: list[tuple[Any, ...]]) -> PgHubStore:
    PgHubStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY report_hourly ({', '.join(COLS)}) "
                                            "FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        conn.execute("VACUUM ANALYZE report_hourly")
    return PgHubStore(url)


def ingest_overhead(n: int, tmp: Path, pg_url: str | None) -> list[list[Any]]:
    """Seconds to ingest ``n`` journal records in batches of 500 with the rollup kept (as
    shipped) and without it (its upsert made a no-op), alternating, best of two."""
    from unittest import mock

    from bench.bench_backlog import journal_with
    from sync.hub import pgstore, store
    from sync.hub.service import parse_batch
    from sync.uplink import encode_batch

    journal, _ = journal_with(tmp / "journal.db", "BUS-00001", n)
    batches = [parse_batch("BUS-00001", encode_batch("BUS-00001", journal.raw_records(
        after, 500))).records for after in range(0, n, 500)]
    journal.close()
    out = []
    backends: list[tuple[str, Callable[[int], HubStore]]] = [
        ("SQLite", lambda i: SqliteHubStore(tmp / f"ingest-{i}.db"))]
    if pg_url is not None:
        backends.append(("PostgreSQL", lambda i: PgHubStore(with_search_path(
            pg_url, f"ingest_{i}"))))
    for name, make in backends:
        best = {True: float("inf"), False: float("inf")}
        for i, keep in enumerate((True, False, True, False)):
            if name == "PostgreSQL":
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute(f"CREATE SCHEMA ingest_{i}")
            s = make(i)
            patch = (mock.patch.object(store if name == "SQLite" else pgstore,
                                       "add_sqlite" if name == "SQLite" else "add_pg",
                                       lambda *a: None) if not keep else None)
            try:
                if patch is not None:
                    patch.start()
                t0 = time.perf_counter()
                for b in batches:
                    s.ingest("BUS-00001", b)
                best[keep] = min(best[keep], time.perf_counter() - t0)
            finally:
                if patch is not None:
                    patch.stop()
                s.close()
        out.append([name, n, f"{best[True]:.2f}", f"{best[False]:.2f}",
                    f"{best[True] / best[False]:.2f}×"])
        print(f"{name:>10}  ingest {n:,}: with rollup {best[True]:.2f} s, without "
              f"{best[False]:.2f} s", flush=True)
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(name: str, store: HubStore, results: list[list[Any]]) -> dict[str, Any]:
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("settlement, every operator", lambda: settlement_statement(
            store, month="2026-10", operator=None, tz="Asia/Shanghai")),
        ("settlement, one operator", lambda: settlement_statement(
            store, month="2026-10", operator=OPERATORS[0], tz="Asia/Shanghai")),
        ("day × route × category", lambda: build_report(
            store, group_by=["day", "route", "category"],
            date_from=datetime(2026, 10, 1).date(), date_to=datetime(2026, 10, 31).date())),
    ]
    totals: dict[str, Any] = {}
    for case, fn in cases:
        first, rep = timed(fn)
        second, _ = timed(fn)
        results.append([name, case, len(rep.rows), f"{first:.2f}", f"{second:.2f}",
                        "PASS" if max(first, second) < 10 else "FAIL"])
        totals[case] = rep.totals
        print(f"{name:>10}  {case:<28} {len(rep.rows):>6} rows  {first:6.2f} s  "
              f"{second:6.2f} s", flush=True)
    return totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--terminals", type=int, default=200)
    ap.add_argument("--pg", default=None, help="superuser URL of a PostgreSQL server")
    ap.add_argument("--ingest", type=int, default=20_000,
                    help="records for the ingest overhead of keeping the rollup (0: skip)")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    gen, rows = timed(lambda: rollup_rows(args.records, args.terminals))
    print(f"{args.records:,} records → {len(rows):,} rollup rows in {gen:.1f} s", flush=True)
    results: list[list[Any]] = []
    cluster = None
    with tempfile.TemporaryDirectory(prefix="ykt-bench-report.") as tmp:
        load_s, store = timed(lambda: load_sqlite(Path(tmp) / "hub.db", rows))
        try:
            sqlite_totals = measure("SQLite", store, results)
        finally:
            store.close()
        server = args.pg
        if server is None:
            cluster = PgCluster(durable=True)
            try:
                cluster.start()
            except PgUnavailable as err:
                print(f"no PostgreSQL: {err}", file=sys.stderr)
                return 1
            server = cluster.url
        name = f"ykt_bench_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            url = with_search_path(with_database(server, name), "public")
            pg_load, pg = timed(lambda: load_pg(url, rows))
            try:
                pg_totals = measure("PostgreSQL", pg, results)
            finally:
                pg.close()
            ingest = (ingest_overhead(args.ingest, Path(tmp), with_database(server, name))
                      if args.ingest else [])
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if cluster is not None:
                cluster.close()
    same = sqlite_totals == pg_totals
    print(f"totals equal on both backends: {same}")
    md = (f"### Settlement report over {args.records:,} records (issue 12)\n\n"
          f"{machine()}; one month, {args.terminals} buses, 50 routes, 5 operators; "
          f"{args.records:,} record bodies → {len(rows):,} hourly rollup rows "
          f"(generated and rolled up in {gen:.0f} s by the ingest's own "
          f"`contribution()`; loaded in {load_s:.0f} s into SQLite, {pg_load:.0f} s into "
          f"PostgreSQL by COPY). Load average {os.getloadavg()[0]:.1f} at the end (the "
          "machine is shared). Seconds, first and second run. Target < 10 s.\n\n"
          + table(["backend", "report", "rows", "first s", "second s", "< 10 s"], results)
          + f"\n\nTotals identical on both backends: {'yes' if same else '**NO**'}.\n"
          + ("\nWhat keeping the rollup costs the ingest (journal records in batches of "
             "500, one transaction each, durable commits; best of two, alternating):\n\n"
             + table(["backend", "records", "with rollup s", "without s", "ratio"], ingest)
             + "\n" if ingest else ""))
    if not args.no_readme:
        update_section("report", md)
    print(md)
    return 0 if same and all(r[-1] == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
