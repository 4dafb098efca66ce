"""How ``ykt`` logs: human lines on a terminal, journald lines under systemd.

* On a terminal: ``2026-11-26 10:00:00,123 [BUS-0042] INFO agent.daemon: …`` — the
  terminal id on every line of ``ykt agent run`` (a technician reading a depot's logs
  side by side must know which box said what).
* Under systemd (``$JOURNAL_STREAM`` set: stderr goes to the journal): no timestamp (the
  journal has one) and a ``<N>`` syslog priority prefix, so ``journalctl -p warning``
  works: ``<4>[BUS-0042] sync.link: disconnected …``.

``-v`` raises the level to INFO, ``-vv`` to DEBUG; ``agent run`` starts at INFO, so a
healthy start says one line (terminal, profile, policy) and decisions are DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["configure"]

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


class _Fields(logging.Filter):
    def __init__(self, terminal: str) -> None:
        super().__init__()
        self.tag = f"[{terminal}] " if terminal else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tag = self.tag
        record.priority = _PRIORITY.get(record.levelno, 6)
        return True


def configure(verbosity: int, *, default: int = logging.WARNING, terminal: str = "") -> None:
    """(Re)configure the root logger: ``default`` level raised by ``verbosity`` (-v), the
    terminal id on every line, journald's format when stderr is the journal."""
    levels = [logging.WARNING, logging.INFO, logging.DEBUG]
    start = levels.index(default) if default in levels else 0
    level = levels[min(start + verbosity, len(levels) - 1)]
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "<%(priority)d>%(tag)s%(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(tag)s%(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Fields(terminal))
    handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
