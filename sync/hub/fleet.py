"""``ykt hub fleet``: one line per terminal from the hub's store.

Last seen, online, applied policy, outbox depth and clock offset, as text or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["fleet_rows", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hub fleet`` to the ``ykt`` parser."""
    from sync.hub.cli import hub_subparsers

    hs = hub_subparsers(sub)
    fl = hs.add_parser("fleet", help="terminals: last seen, online, policy, outbox, clock")
    fl.add_argument("--db", required=True, type=Path, help="SQLite file of the hub")
    fl.add_argument("--offline-after", type=float, default=120.0,
                    help="seconds without news after which a terminal counts as offline")
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=_fleet)


def _fail(msg: str, code: int = 1) -> int:
    print(f"ykt: {msg}", file=sys.stderr)
    return code


def _stamp(value: Any) -> float | None:
    from agent.journal import parse_utc

    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


def fleet_rows(terminals: dict[str, Any], now: float, offline_after_s: float = 120.0
               ) -> list[dict[str, Any]]:
    """One row per terminal from the hub report's ``terminals``: last seen (RFC 3339),
    online (status not ``offline`` and seen within ``offline_after_s``), applied policy,
    outbox depth (records not yet acknowledged) and clock offset (terminal time in its
    last status minus the hub's receive time, seconds; approximate to ±1 s)."""
    rows = []
    for tid in sorted(terminals):
        t = terminals[tid] or {}
        st = t.get("status") or {}
        seen = _stamp(t.get("last_seen"))
        online = (st.get("state", "online") != "offline" and seen is not None
                  and now - seen <= offline_after_s)
        sent = _stamp(st.get("time"))
        outbox = st.get("outbox")
        if outbox is None and "last_seq" in st:
            outbox = int(st.get("last_seq", 0)) - int(st.get("acked_seq", 0))
        rows.append({
            "terminal": tid, "last_seen": t.get("last_seen"), "online": online,
            "policy": st.get("policy", ""), "policy_state": st.get("policy_state", ""),
            "policy_refusal": st.get("policy_refusal", ""), "outbox": outbox,
            "clock_offset_s": None if sent is None or seen is None else round(sent - seen, 1),
            "clock": st.get("clock", ""),
        })
    return rows


def _fleet(args: argparse.Namespace) -> int:
    from sync.hub.store import SqliteHubStore

    if not args.db.exists():
        return _fail(f"{args.db}: no such hub database", 2)
    store = SqliteHubStore(args.db)
    try:
        rows = fleet_rows(store.report()["terminals"], time.time(), args.offline_after)
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    head = f"{'terminal':20} {'last seen':20} {'state':7} {'policy':28} {'outbox':>7} {'clock':>7}"
    lines = [head]
    for r in rows:
        off = "" if r["clock_offset_s"] is None else f"{r['clock_offset_s']:+.0f}s"
        pol = r["policy"] + (f" ({r['policy_refusal']})" if r["policy_refusal"] else "")
        lines.append(f"{r['terminal']:20} {r['last_seen'] or '-':20} "
                     f"{'online' if r['online'] else 'offline':7} {pol:28} "
                     f"{'' if r['outbox'] is None else r['outbox']:>7} {off:>7}")
    print("\n".join(lines))
    return 0
