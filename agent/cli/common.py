"""What the terminal's commands share: the ``--config``/``--json`` options and loading the
configuration with the one error style (``error: FILE:LINE: key: what to do`` on stderr,
the caller exits 2)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig, ConfigFileError, load_config

__all__ = ["DEFAULT_CONFIG", "add_command", "add_config_args", "load_or_report"]

DEFAULT_CONFIG = "/etc/ykt/terminal.toml"
"""The installed terminal's configuration (scripts/install writes it)."""


def add_config_args(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_CONFIG,
                    json: bool = True, required: bool = False,
                    config_help: str | None = None) -> None:
    """Add ``--config/-c`` (default ``default``, or ``required``) and, unless ``json`` is
    false, ``--json``."""
    p.add_argument("--config", "-c", default=default, required=required,
                   help=config_help or "terminal config file (default: %(default)s)")
    if json:
        p.add_argument("--json", action="store_true", help="machine-readable output")


def add_command(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                name: str, func: Callable[[argparse.Namespace], int], help: str,
                **config: Any) -> argparse.ArgumentParser:
    """A subcommand ``name`` running ``func``, with :func:`add_config_args` (``config``
    passed on); returned for its own arguments."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help)
    add_config_args(p, **config)
    p.set_defaults(func=func)
    return p


def load_or_report(path: str | None) -> AgentConfig | None:
    """The configuration at ``path`` (None: the embedded demo defaults), or None after
    printing each problem of a file that does not load (the caller then exits 2)."""
    try:
        return load_config(path)
    except ConfigFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
