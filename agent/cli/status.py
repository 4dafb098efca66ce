"""``ykt status`` and ``ykt sync now|status``: what a technician asks a terminal first.

From the running daemon through its control socket (``DATA_DIR/control.sock``), falling
back to the files when the daemon is down. Exit 0 when the daemon runs with no alarm,
1 when it is down or reports an alarm (``docs/operations.md`` says what to do), 2 for a
configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.cli.common import add_command, load_or_report
from agent.control import SOCKET_NAME, ask, status_from_files
from agent.textcols import pad

__all__ = ["register"]

_ORDER = ("terminal", "profile", "daemon", "policy", "policy_state", "policy_expires",
          "unmerged", "last_seq", "acked_seq", "outbox", "oldest_unsynced", "clock",
          "clock_offset_s", "disk_free_mb", "slow_taps", "tap_budget_ms", "longest_tap_ms",
          "alarms", "policy_warnings")


def _text(st: dict[str, Any]) -> str:
    lists = ("alarms", "policy_warnings")
    lines = [f"{pad(k, 16, '>')}: {st[k]}" for k in _ORDER if k in st and k not in lists]
    for k in lists:
        if k in st or k == "alarms":
            lines.append(f"{pad(k, 16, '>')}: {', '.join(st.get(k) or []) or 'none'}")
    for d in st.get("last_decisions") or []:
        what = d.get("event") or ("ACCEPT" if d.get("accepted") else "DENY")
        lines.append(f"{'':>16}  #{d.get('seq')} {d.get('time')} {what} "
                     f"{d.get('reason') or ''} {d.get('product') or ''}".rstrip())
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    st = ask(cfg.terminal.data_dir / SOCKET_NAME, "status") or status_from_files(cfg)
    print(json.dumps(st, ensure_ascii=False, indent=2) if args.json else _text(st))
    return 1 if st.get("daemon") != "running" or st.get("alarms") else 0


def _sync_now(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    reply = ask(cfg.terminal.data_dir / SOCKET_NAME, "sync")
    if reply is None:
        print("ykt sync now: the agent is not running (systemctl start ykt-agent)",
              file=sys.stderr)
        return 1
    if "error" in reply:
        print(f"ykt sync now: {reply['error']}", file=sys.stderr)
        return 1
    print(json.dumps(reply) if args.json else f"sync started; {reply['outbox']} records pending")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_command(sub, "status", _status, "the terminal now: daemon, policy, outbox, clock, "
                "disk, alarms, last decisions")
    sync = sub.add_parser("sync", help="the uplink to the hub")
    ssub = sync.add_subparsers(dest="sync_cmd", metavar="ACTION", required=True)
    add_command(ssub, "now", _sync_now, "send what is pending now")
    add_command(ssub, "status", _status, "journal position and outbox (same as `ykt status`)")
