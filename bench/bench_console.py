"""Console costs: a 用卡轨迹 lookup (a scan of the records for one keyed hash) and a
``/metrics`` scrape, against stores of growing size; SQLite.

``python -m bench.bench_console [--records 100000,400000] [--terminals 1000]``. Records
are ingested through the store's own ``ingest`` in batches (chains verified), with the
engine's body shape; one holder in 1,000 records is the one looked up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from agent.journal import GENESIS, canonical, record_hash, utc_stamp
from agent.pseudonym import Pseudonymizer
from bench.report import machine, table, update_section
from sync.hub.console.trail import parse_identifier, trail_rows
from sync.hub.fleetstore import open_fleet_store
from sync.hub.store import IncomingRecord, SqliteHubStore
from sync.hub.web_metrics import HubCollector

PSEUDO = Pseudonymizer(b"bench-console-deployment-key-01")
SSN = "370302195001011234"


def _fill(store: SqliteHubStore, records: int, terminals: int) -> None:
    target = PSEUDO.holder_key(SSN)
    per = max(1, records // terminals)
    t0 = 1_790_000_000.0
    for t in range(terminals):
        tid = f"bus-{t:04d}"
        prev, batch = GENESIS, []
        for seq in range(1, per + 1):
            n = t * per + seq
            body: dict[str, Any] = {
                "v": 1, "terminal": tid, "seq": seq, "prev": prev, "clock": "synced",
                "time": utc_stamp(t0 + n), "profile": "bus_validator",
                "loc": {"route": str(t % 40), "stop": "S1"},
                "cred": {"kind": "ssc_card", "credential_key": f"{n:032x}",
                         "holder_key": target if n % 1000 == 0 else f"{n:032x}"},
                "accepted": True, "reason": "accepted", "product": "standard",
                "amount": 200, "category": ""}
            h = record_hash(body)
            batch.append(IncomingRecord(seq, h, body, canonical(body).decode(), h))
            prev = h
            if len(batch) == 1000:
                store.ingest(tid, batch)
                batch = []
        if batch:
            store.ingest(tid, batch)


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", default="100000,400000")
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    ident = parse_identifier(SSN, PSEUDO)
    for n in (int(x) for x in args.records.split(",")):
        with tempfile.TemporaryDirectory(prefix="ykt-bench-console.") as tmp:
            db = Path(tmp) / "hub.db"
            store = SqliteHubStore(db)
            fleet = open_fleet_store(db)
            _fill(store, n, args.terminals)
            now = time.time()
            for t in range(args.terminals):
                fleet.record_status(f"bus-{t:04d}", {"state": "online", "outbox": t % 50,
                                                     "policy": f"city/bus@{t % 3 + 1}"}, now)
            found, lookups = 0, []
            for _ in range(5):
                t0 = time.perf_counter()
                found = len(trail_rows(store, ident))
                lookups.append(time.perf_counter() - t0)
            reg = CollectorRegistry(auto_describe=False)
            reg.register(HubCollector(store, fleet=fleet))
            scrapes = []
            for _ in range(5):
                t0 = time.perf_counter()
                generate_latest(reg)
                scrapes.append(time.perf_counter() - t0)
            rows.append((f"{n:,}", args.terminals, found, _ms(lookups), _ms(scrapes)))
            fleet.close()
            store.close()
    md = ("## Console: 用卡轨迹 lookup and /metrics scrape (`python -m bench.bench_console`)\n\n"
          f"{machine()}. SQLite store filled through `ingest`; medians of 5.\n\n"
          + table(["records", "terminals", "trail rows", "trail lookup ms", "scrape ms"],
                  rows)
          + f"\n\nLookup time per 100,000 records: {float(rows[-1][3]) / (int(rows[-1][0].replace(',', '')) / 100_000):.0f} ms "
            "(a scan: the hash is matched in the canonical body).")
    print(md)
    if not args.no_readme:
        update_section("console", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
