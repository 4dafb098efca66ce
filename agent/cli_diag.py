"""``ykt diag``: check every part of this terminal and say what to do (agent/diag.py).

Exit 0 when every configured part is fine, 1 when one fails, 2 for a configuration file
that does not load."""

from __future__ import annotations

import argparse
import json
import sys
import time

from agent.config import AgentConfig, ConfigFileError, load_config
from agent.diag import Check, run_checks
from agent.textcols import pad

__all__ = ["register"]


def broker_check(cfg: AgentConfig, source: str | None) -> Check:
    """Can this terminal reach its broker (with its TLS settings) within 5 s?"""
    if not cfg.mqtt.enabled:
        return Check("broker", None, "mqtt disabled")
    from sync.link import Link

    link = Link(cfg.mqtt.link_settings(), f"{cfg.terminal.id}-diag-{int(time.time())}")
    link.start()
    try:
        ok = link.wait_connected(5)
    finally:
        link.stop()
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}" + (" (TLS)" if cfg.mqtt.tls_ca_file else "")
    if not ok:
        return Check("broker", False, f"no connection to {where} within 5 s",
                     "check the network, the broker and the terminal's certificate")
    return Check("broker", True, f"connected to {where}")


def _diag(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checks = run_checks(cfg, args.config, extra=[broker_check])
    if args.json:
        print(json.dumps([c.as_dict() for c in checks], ensure_ascii=False, indent=2))
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "  - "}[c.ok]
            print(f"{mark} {pad(c.name, 16)} {c.detail}")
            if c.ok is False and c.fix:
                print(f"{'':5}{'':16} → {c.fix}")
    return 1 if any(c.ok is False for c in checks) else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("diag", help="check every part of this terminal and say what to do")
    p.add_argument("--config", "-c", default="/etc/ykt/terminal.toml",
                   help="terminal config file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_diag)
