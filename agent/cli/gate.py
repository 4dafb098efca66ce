"""``ykt gate test``: open the configured gate once and see the controller report it.

For the technician after fitting a gate: it opens the terminal's gate backend from the
config (serial line or the sim controller), asks for its status, opens the barrier in the
configured direction for ``--open-ms`` and waits for the controller's OPENED event.
Exit 0 when the barrier opened, 1 when the controller did not answer or refused, 2 for a
configuration without a gate. The agent holds the serial line while it runs: stop it
first (``systemctl stop ykt-agent``). Nothing is journaled: this is not a decision.
"""

from __future__ import annotations

import argparse
import queue
import sys
from typing import Any

from agent.cli.common import add_config_args, load_or_report

__all__ = ["register"]


def _test(args: argparse.Namespace) -> int:
    from drivers.gate import GateEventKind
    from drivers.registry import load_gate

    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    if not cfg.gate.enabled:
        print(f"ykt gate test: {args.config} has no gate ([gate] enabled = false)",
              file=sys.stderr)
        return 2
    try:
        gate = load_gate(cfg.gate.backend).from_options(cfg.gate.options)  # type: ignore[arg-type]
    except Exception as err:    # the line is busy or gone: say so, no traceback
        print(f"ykt gate test: cannot open the gate ({err}); is the agent running? "
              "(systemctl stop ykt-agent)", file=sys.stderr)
        return 1
    events: queue.Queue[Any] = queue.Queue()
    gate.subscribe(events.put)
    try:
        if not gate.wait_ready(args.timeout):
            print(f"ykt gate test: the controller did not answer within {args.timeout:g} s "
                  "(power, cable, url?)", file=sys.stderr)
            return 1
        direction = getattr(cfg.gate.options, "direction", "in")
        try:
            gate.open(direction, args.open_ms)
        except Exception as err:
            print(f"ykt gate test: the controller refused to open: {err}", file=sys.stderr)
            return 1
        try:
            while events.get(timeout=args.timeout).kind is not GateEventKind.OPENED:
                pass
        except queue.Empty:
            print("ykt gate test: no OPENED report from the controller", file=sys.stderr)
            return 1
        print(f"gate {gate.name}: opened {direction} for {args.open_ms} ms "
              f"(controller status: {gate.status()})")
        return 0
    finally:
        gate.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gate = sub.add_parser("gate", help="the gate controller")
    gsub = gate.add_subparsers(dest="gate_cmd", metavar="ACTION", required=True)
    p = gsub.add_parser("test", help="open the gate once and check the controller reports it")
    add_config_args(p, json=False)
    p.add_argument("--open-ms", type=int, default=1000, help="how long to open (ms)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answers")
    p.set_defaults(func=_test)
