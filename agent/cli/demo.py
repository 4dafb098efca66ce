"""``ykt demo``: a broker, a hub and a bus validator on embedded defaults, taps decided live."""

from __future__ import annotations

import argparse
import json
import sys
from zoneinfo import ZoneInfo

from agent.engine import Outcome
from agent.textcols import pad

__all__ = ["register"]


def _line(o: Outcome, who: str) -> str:
    d = o.decision
    t = o.record.wall_time.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M:%S") \
        if o.record else "--:--:--"
    mark = "✔" if d.accepted else "✘"
    seq = f"#{o.record.seq}" if o.record else "(not journaled)"
    return (f"{t} {mark} {pad(d.prompt.text, 20)} {d.reason.value:<13} {d.product:<13} "
            f"{d.amount_cents / 100:>5.2f}  {pad(who, 24)} {seq}")


def _demo(args: argparse.Namespace) -> int:
    from simulator.demo import run_demo, summary_dict

    human = not args.json

    def on_outcome(o: Outcome, who: str) -> None:
        if human:
            print(_line(o, who), flush=True)

    def on_event(msg: str) -> None:
        if human:
            print(f"--- {msg}", flush=True)

    try:
        taps = args.taps or (120 if args.profile == "bus_validator" else 40)
        s = run_demo(taps, profile=args.profile, seed=args.seed, outage=not args.no_outage,
                     tls=args.tls, cards_backend=args.cards,
                     workdir=args.workdir, gap_s=args.gap,
                     on_outcome=on_outcome, on_event=on_event)
    except (RuntimeError, FileNotFoundError, TimeoutError, ValueError) as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    data = summary_dict(s)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print("\n=== summary ===")
        print(f"taps {s.taps}, decided {s.decided} ({s.accepted} accepted, {s.denied} denied), "
              f"journaled {s.journaled}, not journaled {s.not_journaled} (tap again)")
        print("by reason:  " + ", ".join(f"{k} {v}" for k, v in s.by_reason.items()))
        print("by product: " + ", ".join(f"{k} {v}" for k, v in s.by_product.items()))
        if s.fares_cents:
            print(f"fares to settle: {s.fares_cents / 100:.2f} CNY")
        if s.events:
            print("events:     " + ", ".join(f"{k} {v}" for k, v in s.events.items()))
        print(f"taps journaled while the broker was down: {s.taps_during_outage}")
        print(f"records at hub {s.records_at_hub}, lost {s.lost}, duplicated {s.duplicated}, "
              f"chain {'verifies' if s.chain_verifies else 'BROKEN'}, "
              f"backlog synced in {s.synced_in_s:.2f} s")
        print(f"tap → decision journaled and acted on: p50 {s.decision_ms_p50:.2f} ms, "
              f"p99 {s.decision_ms_p99:.2f} ms")
        print(f"policy journaled: {s.policy}")
        if s.undecided:
            print(f"NOT DECIDED: {len(s.undecided)} tap(s), numbers "
                  + ", ".join(str(n) for n in s.undecided) + " (see the log above)")
        print(f"files: {s.workdir}")
    return 0 if s.ok else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run a bus validator, a hub and a broker with simulated taps")
    p.add_argument("--profile", default="bus_validator",
                   choices=["bus_validator", "scenic_gate", "museum_gate", "service_kiosk"],
                   help="terminal profile to run (default bus_validator)")
    p.add_argument("--taps", type=int, default=None,
                   help="number of taps (default 120 on a bus, 40 elsewhere)")
    p.add_argument("--cards", choices=["sim", "vpcd"], default="sim",
                   help="sim: in-process cards; vpcd: virtual cards through pcscd + pyscard")
    p.add_argument("--seed", type=int, default=7, help="population and script seed")
    p.add_argument("--no-outage", action="store_true", help="skip the broker outage")
    p.add_argument("--tls", action="store_true",
                   help="mutual TLS: hub CA, generated broker config, terminal enrolled "
                        "over HTTPS (docs/security.md)")
    p.add_argument("--gap", type=float, default=0.03, help="real seconds between taps")
    p.add_argument("--workdir", help="keep the run's files here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print only the summary as JSON")
    p.set_defaults(func=_demo)
