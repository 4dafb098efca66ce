"""Hub ingest: SQLite vs PostgreSQL, in-process and end to end, one hub vs two.

Run: ``.venv/bin/python -m bench.bench_hub_pg [--records 100000] [--terminals 4]
[--pg postgresql://postgres@HOST:PORT/postgres]``

* **store** — :meth:`HubStore.ingest` in-process: tx payloads of 500 records are parsed
  (:func:`sync.hub.service.parse_batch`) and committed one transaction each, as the hub
  does, one writer per terminal (``--terminals`` writers at once, each with its own
  store instance/connection for PostgreSQL).
* **end to end** — the backlog of ``--terminals`` journals flushed by real
  :class:`sync.uplink.Uplink` s through a real Mosquitto to ``ykt hub run`` process(es),
  timed until every terminal has the hub's ack of its last record: one SQLite hub, one
  PostgreSQL hub, and two PostgreSQL hubs sharing the subscription and the database.

Both databases commit durably (SQLite ``synchronous=FULL``; PostgreSQL as configured —
``synchronous_commit`` and ``fsync`` are printed). The server is ``--pg``, or else a
durable throw-away cluster made for the run (:class:`simulator.postgres.PgCluster`, which
needs root and the ``postgresql`` package). A fresh database ``ykt_bench_<random>`` is
created on the server and dropped afterwards. If PostgreSQL is not reachable the benchmark
says so and exits 1 without touching ``bench/README.md``.
Writes its table to ``bench/README.md`` (section ``hub_pg``).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from agent.journal import Journal
from bench.bench_backlog import journal_with
from bench.report import machine, table, update_section
from simulator.broker import Mosquitto
from simulator.postgres import PgCluster, PgUnavailable, with_database, with_search_path
from sync.hub.pgstore import PgHubStore, redact_dsn
from sync.hub.service import parse_batch
from sync.hub.store import HubStore, IncomingRecord, SqliteHubStore
from sync.link import MqttSettings
from sync.uplink import Uplink, UplinkSettings, encode_batch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 500
log = logging.getLogger("bench.hub_pg")


def fresh_schema(db_url: str) -> str:
    """URL of a new empty schema in ``db_url``'s database."""
    schema = f"s_{secrets.token_hex(4)}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return with_search_path(db_url, schema)


def payloads(journal: Journal) -> list[bytes]:
    """The journal as tx payloads of :data:`BATCH` records."""
    out, after = [], 0
    while rows := journal.raw_records(after, BATCH):
        out.append(encode_batch(journal.terminal, rows))
        after = rows[-1][0]
    return out


def store_rate(make: list[HubStore], work: dict[str, list[bytes]]) -> tuple[float, float]:
    """Seconds and records/s for each store in ``make`` ingesting one terminal's payloads
    (parse + ingest), all at once."""
    errors: list[BaseException] = []
    counted: list[int] = []

    def run(store: HubStore, terminal: str, msgs: list[bytes]) -> None:
        n = 0
        try:
            for m in msgs:
                recs: list[IncomingRecord] = parse_batch(terminal, m).records
                n += store.ingest(terminal, recs).stored
        except BaseException as err:
            errors.append(err)
        counted.append(n)

    threads = [threading.Thread(target=run, args=(s, t, msgs))
               for s, (t, msgs) in zip(make, work.items(), strict=True)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"ingest failed: {errors[0]!r}") from errors[0]
    total = sum(counted)
    return elapsed, total / elapsed


def start_hub(db: str, broker: Mosquitto, log_path: Path) -> subprocess.Popen[str]:
    """A ``ykt hub run`` process on ``db``, its stderr in ``log_path``, once ready."""
    with open(log_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "hub", "run", "--db", db,
                                 "--host", broker.host, "--port", str(broker.port)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("hub ready"):
        proc.kill()
        raise RuntimeError(f"hub on {redact_dsn(db) if '://' in db else db} did not start")
    return proc


def stop_hub(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def e2e_rate(sources: list[Path], workdir: Path, dbs: list[str],
             broker: Mosquitto, n: int) -> tuple[float, float]:
    """Seconds and records/s to flush copies of the ``sources`` journals through hubs on
    ``dbs`` (one ``ykt hub run`` each, sharing the subscription)."""
    workdir.mkdir()
    journals = []
    for src in sources:
        dst = workdir / src.name
        shutil.copy(src, dst)
        journals.append(Journal(dst, src.stem))
    hubs = [start_hub(db, broker, workdir / f"hub-{i}.log") for i, db in enumerate(dbs)]
    settings = MqttSettings(host=broker.host, port=broker.port)
    ups = [Uplink(j, settings, j.terminal, options=UplinkSettings()) for j in journals]
    try:
        t0 = time.perf_counter()
        for u in ups:
            u.start()
        for u in ups:
            if not u.wait_synced(600):
                raise RuntimeError(f"flush incomplete: {u.terminal} at {u.journal.acked_seq}")
        elapsed = time.perf_counter() - t0
    finally:
        for u in ups:
            u.stop()
        for h in hubs:
            stop_hub(h)
        for j in journals:
            j.close()
    return elapsed, n / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000, help="records in all")
    ap.add_argument("--terminals", type=int, default=4, help="terminals sharing them")
    ap.add_argument("--pg", default=None,
                    help="PostgreSQL URL of a role that may create databases (default: a "
                         "throw-away cluster made for the run)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/README.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.pg is not None:
        return run(args, args.pg)
    try:
        with PgCluster(durable=True) as cluster:
            return run(args, cluster.url)
    except PgUnavailable as err:
        print(f"no PostgreSQL for the bench: {err}; or give --pg URL", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, admin_url: str) -> int:
    """The benchmark on the server at ``admin_url``; returns the exit status."""
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        print(f"PostgreSQL not reachable at {redact_dsn(admin_url)} ({str(err).strip()})",
              file=sys.stderr)
        return 1
    dbname = f"ykt_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    sync_commit = admin.execute("SHOW synchronous_commit").fetchone()
    fsync = admin.execute("SHOW fsync").fetchone()
    pg_version = admin.execute("SHOW server_version").fetchone()
    db_url = with_database(admin_url, dbname)
    per = args.records // args.terminals
    n = per * args.terminals
    rows: list[list[object]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ykt-bench-") as tmp, \
                Mosquitto(workdir=Path(tmp) / "mqtt", persistence=False) as broker:
            d = Path(tmp)
            print(f"journaling {n} records for {args.terminals} terminals…", flush=True)
            sources: list[Path] = []
            fillers = []
            for i in range(args.terminals):
                path = d / f"bench-t{i}.db"
                sources.append(path)
                fillers.append(threading.Thread(
                    target=lambda p=path: journal_with(p, p.stem, per)[0].close()))
            for th in fillers:
                th.start()
            for th in fillers:
                th.join()
            work: dict[str, list[bytes]] = {}
            for src in sources:
                j = Journal(src, src.stem)
                work[src.stem] = payloads(j)
                j.close()

            print("store ingest…", flush=True)
            sq = SqliteHubStore(d / "store.db")
            sq_s, sq_rate = store_rate([sq] * args.terminals, work)
            sq.close()
            pg_url = fresh_schema(db_url)
            pgs: list[HubStore] = [PgHubStore(pg_url) for _ in range(args.terminals)]
            pg_s, pg_rate = store_rate(pgs, work)
            for s in pgs:
                s.close()
            rows.append([f"store ingest ({args.terminals} writers, {BATCH}/tx)", n,
                         f"{sq_s:.2f} s · {sq_rate:,.0f}/s", f"{pg_s:.2f} s · {pg_rate:,.0f}/s"])

            print("end to end…", flush=True)
            e_sq = e2e_rate(sources, d / "e2e-sqlite", [str(d / "hub.db")], broker, n)
            e_pg1 = e2e_rate(sources, d / "e2e-pg1", [fresh_schema(db_url)], broker, n)
            shared = fresh_schema(db_url)
            e_pg2 = e2e_rate(sources, d / "e2e-pg2", [shared, shared], broker, n)
            rows.append([f"end to end, 1 hub ({args.terminals} uplinks)", n,
                         f"{e_sq[0]:.2f} s · {e_sq[1]:,.0f}/s",
                         f"{e_pg1[0]:.2f} s · {e_pg1[1]:,.0f}/s"])
            rows.append([f"end to end, 2 hubs sharing ({args.terminals} uplinks)", n, "—",
                         f"{e_pg2[0]:.2f} s · {e_pg2[1]:,.0f}/s"])
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
    assert sync_commit and fsync and pg_version
    md = (f"## Hub ingest: SQLite vs PostgreSQL (`python -m bench.bench_hub_pg`)\n\n"
          f"{machine()}; PostgreSQL {pg_version[0]} on the same machine "
          f"(synchronous_commit={sync_commit[0]}, fsync={fsync[0]}); SQLite WAL, "
          f"synchronous=FULL. One transaction per {BATCH}-record tx message. End to end: "
          f"real Mosquitto, `ykt hub run` process(es), timed until every terminal has the "
          f"ack of its last record; every process shares the same cores, so runs vary by "
          f"±30 %. Target: tens of thousands of records/s.\n\n"
          + table(["path", "records", "SQLite", "PostgreSQL"], rows) + "\n")
    print(md)
    if not args.no_write:
        update_section("hub_pg", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
