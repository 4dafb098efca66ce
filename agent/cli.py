"""The ``ykt`` command: one command, subcommands contributed by each area.

Each module in :data:`SUBCOMMAND_MODULES` defines ``register(sub)`` that adds its
subcommands to the argparse sub-parsers and sets ``func`` (returning an exit code).
Every subcommand prints human text by default and JSON with ``--json``.
Exit codes: 0 success, 1 failure reported, 2 usage or configuration error. A project
error (:class:`agent.errors.YktError`) that a subcommand does not handle itself ends the
command with its message and :func:`agent.errors.exit_code` (2 for a
``ConfigurationError`` or ``Unavailable``, else 1); any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from agent.errors import YktError, exit_code
from agent.logsetup import configure as configure_logging

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]

SUBCOMMAND_MODULES = [
    "agent.cli_agent",    # ykt agent run / config validate / journal verify / status
    "agent.cli_status",   # ykt status / sync now|status
    "agent.cli_diag",     # ykt diag
    "agent.cli_demo",     # ykt demo
    "agent.cli_card",     # ykt card read
    "agent.cli_qr",       # ykt qr decode / issue
    "agent.cli_policy",   # ykt hub policy …
    "sync.hub.cli",       # ykt hub run / export / report / fleet
    "sync.hub.cli_trust",  # ykt hub ca / identity / broker-config / enroll / web / revoke / crl
    "agent.cli_enroll",   # ykt enroll (terminal side)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ykt", description="Yikatong Edge terminal and hub")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except BrokenPipeError:       # the reader went away (`ykt journal show | head`): quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the flush at exit cannot fail again
        return 0
    except YktError as err:
        print(f"ykt {args.command}: {err}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
