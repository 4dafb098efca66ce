"""Minimal systemd ``sd_notify`` (READY=1, WATCHDOG=1, STATUS=, STOPPING=1) over
``$NOTIFY_SOCKET``, and the watchdog interval from ``$WATCHDOG_USEC``.

A no-op when not run by systemd. Never raises: a failing notification is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

__all__ = ["notify", "supervise", "watchdog_interval_s", "worker_stall_s"]

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``) to systemd; True if a socket was there."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall("\n".join(states).encode())
        return True
    except OSError as err:
        log.warning("sd_notify to %s failed: %s", addr, err)
        return False


def _watchdog_s() -> float | None:
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def watchdog_interval_s(default: float = 5.0) -> float:
    """How often to ping the watchdog (seconds): half of systemd's ``$WATCHDOG_USEC``, or
    ``default`` when it is not set or not a positive number."""
    period = _watchdog_s()
    return default if period is None else period / 2


def worker_stall_s(default: float = 10.0, floor: float = 2.0) -> float:
    """Seconds without a sign of life after which a worker counts as stuck: the whole
    watchdog period (at least ``floor``), or ``default`` without one. A decision takes
    milliseconds and an idle worker checks in every second."""
    period = _watchdog_s()
    return default if period is None else max(floor, period)


def supervise(stopped: threading.Event, health: Callable[[], str | None], ok_status: str
              ) -> int:
    """The watchdog loop of a running service, until ``stopped`` is set.

    Every :func:`watchdog_interval_s` it asks ``health()`` (None: healthy, else the
    problem) and pings ``WATCHDOG=1`` only when healthy — never from a bare timer, so a
    stuck worker lets systemd's watchdog restart the service. A change of health is sent
    as ``STATUS=`` (``ok_status`` when healthy) and logged once, not at every check. A
    problem starting with "journal" (the journal on disk is no longer this process's to
    write) ends the loop with exit status 1 so that systemd restarts the service, which
    re-reads it. Returns 0 when stopped, 1 after such a problem.
    """
    reported: str | None = None
    while not stopped.wait(watchdog_interval_s()):
        problem = health()
        if problem != reported:
            if problem is None:
                log.info("healthy again")
                notify(f"STATUS={ok_status}")
            else:
                log.error("unhealthy: %s", problem)
                notify(f"STATUS=unhealthy: {problem}")
            reported = problem
        if problem is None:
            notify("WATCHDOG=1")
        elif problem.startswith("journal"):
            log.critical("stopping with status 1 so that the service restarts")
            return 1
    return 0
