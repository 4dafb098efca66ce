"""Minimal systemd ``sd_notify`` (READY=1, WATCHDOG=1, STOPPING=1) over ``$NOTIFY_SOCKET``.

A no-op when not run by systemd. Never raises: a failing notification is logged.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

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
