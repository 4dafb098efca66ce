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
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Sequence

from agent.errors import YktError, exit_code
from agent.logsetup import configure as configure_logging

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]

SUBCOMMAND_MODULES = [
    "agent.cli.agent",    # ykt agent run / config validate / journal verify / status
    "agent.cli.status",   # ykt status / sync now|status
    "agent.cli.diag",     # ykt diag
    "agent.cli.gate",     # ykt gate test
    "agent.cli.config",   # ykt config show / get / set (after cli_agent's config validate)
    "agent.cli.demo",     # ykt demo
    "agent.cli.card",     # ykt card read
    "agent.cli.qr",       # ykt qr decode / issue
    "sync.hub.cli",       # ykt hub run / export / report
    "sync.hub.cli_policy",  # ykt hub policy …
    "sync.hub.hotlist_cli",  # ykt hub hotlist add / remove
    "sync.hub.fleet",     # ykt hub fleet
    "sync.hub.cli_trust",  # ykt hub ca / identity / broker-config / enroll / web / revoke / crl
    "sync.hub.console.cli",  # ykt hub console user … / audit, ykt hub trail
    "agent.cli.enroll",   # ykt enroll (terminal side)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ykt", description="Yikatong Edge terminal and hub")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug); anywhere on the line")
    parser.add_argument("--version", action="version", version=f"ykt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("yikatong-edge")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def split_verbosity(argv: Sequence[str]) -> tuple[int, list[str]]:
    """``-v``/``-vv``/``--verbose`` taken from anywhere on the line (``ykt journal show
    -v`` as well as ``ykt -v journal show``), up to a ``--``; the rest in order."""
    level, rest = 0, list[str]()
    for i, arg in enumerate(argv):
        if arg == "--":
            rest += argv[i:]
            break
        if arg == "--verbose":
            level += 1
        elif len(arg) > 1 and arg.startswith("-") and set(arg[1:]) == {"v"}:
            level += len(arg) - 1
        else:
            rest.append(arg)
    return level, rest


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    level, rest = split_verbosity(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    args.verbose = level + args.verbose
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

