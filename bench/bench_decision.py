"""Decision + durable journal latency per tap, with 1 million entitlements loaded.

Runs, in one process and one run, (a) the full ``Engine.handle`` path — facts from the
store (hotlist + entitlements), counters and passback from the journal, first-match
rules, and the fsync'd journal commit — and (b) the floor: the bare ``Journal.append``
of a record of the same size. Prints p50/p99/max for both and their ratio.

Usage: ``python -m bench.bench_decision [--entitlements N] [--taps N]``
Budget: p99 < 2 ms for (a) on this machine (issue 2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from agent.engine import Engine
from agent.journal import Journal
from agent.model import Location, Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from agent.store import PolicyInfo, PolicyStore
from bench.report import machine, table, update_section
from drivers.sim_cards import credential_from_holder
from profiles import profile_path
from simulator.population import Population

CATEGORIES = ("elderly", "disabled", "youfu", "student")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def build_store(path: Path, n: int, pseudo: Pseudonymizer, pop: Population) -> float:
    t0 = time.perf_counter()
    store = PolicyStore(path)

    def rows():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield {"holder_key": pseudo.key("holder", f"bench-{i:09d}"),
                   "name": CATEGORIES[i % 4], "valid_from": "", "valid_until": ""}
        for h in pop:
            for c in h.categories:
                yield {"holder_key": pseudo.holder_key(h.ssn), "name": c,
                       "valid_from": "", "valid_until": ""}

    hot = ({"key": pseudo.key("card", f"lost-{i:08d}"), "kind": "card", "reason": "lost",
            "listed": ""} for i in range(n // 10))
    store.apply(entitlements=rows(), hotlist=hot, replace=True,
                info=PolicyInfo("bench/0/bus", 1, "x", ""))
    store.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entitlements", type=int, default=1_000_000)
    ap.add_argument("--taps", type=int, default=3000)
    args = ap.parse_args()
    pseudo = Pseudonymizer(b"bench-key-0123456789abcdef")
    pop = Population.generate(200, seed=11)
    work = Path(tempfile.mkdtemp(prefix="ykt-bench-decision-"))
    build_s = build_store(work / "store.db", args.entitlements, pseudo, pop)
    store = PolicyStore(work / "store.db")
    counts = store.counts()
    journal = Journal(work / "journal.db", "BENCH-1")
    floor_journal = Journal(work / "floor.db", "BENCH-1")
    now = [datetime(2026, 11, 25, 7, 0).timestamp()]
    engine = Engine(load_ruleset(profile_path("bus_validator")), store, journal,
                    location=Location(route="19", vehicle="V1"), clock=lambda: now[0])
    creds = [credential_from_holder(h, pseudo) for h in pop]
    full: list[float] = []
    floor: list[float] = []
    sample = None
    for i in range(args.taps):
        now[0] += 7.0
        p = Presentation(PresentationKind.CARD, "bench", 0, credential=creds[i % len(creds)])
        t0 = time.perf_counter_ns()
        out = engine.handle(p)
        t1 = time.perf_counter_ns()
        assert out.record is not None
        sample = out.record.body
        full.append((t1 - t0) / 1e6)
        t0 = time.perf_counter_ns()
        floor_journal.append({k: v for k, v in sample.items()
                              if k not in ("v", "terminal", "seq", "prev", "time")},
                             at=now[0])
        floor.append((time.perf_counter_ns() - t0) / 1e6)
    rows = []
    for name, vals in (("decide + journal (Engine.handle)", full),
                       ("floor: bare Journal.append", floor)):
        rows.append([name, f"{statistics.median(vals):.3f}", f"{pct(vals, 0.99):.3f}",
                     f"{max(vals):.3f}"])
    ratio = pct(full, 0.99) / pct(floor, 0.99)
    verdict = "PASS" if pct(full, 0.99) < 2.0 else "FAIL"
    md = (f"### Decision + durable journal per tap (issue 2)\n\n"
          f"{machine()}; store: {counts['entitlements']:,} entitlements, "
          f"{counts['hotlist']:,} hotlist entries (built in {build_s:.1f} s); "
          f"{args.taps:,} taps; SQLite WAL, synchronous=FULL.\n\n"
          + table(["path", "p50 ms", "p99 ms", "max ms"], rows)
          + f"\n\np99 ratio full/floor: {ratio:.2f}×. Budget p99 < 2 ms: **{verdict}**.\n")
    print(md)
    update_section("decision", md)


if __name__ == "__main__":
    main()
