"""Clock quality: is the wall clock synchronised (NTP/chrony) right now?

Uses the kernel's ``adjtimex(2)`` (read-only: ``modes = 0``): a return value of
``TIME_ERROR`` (5) means the kernel considers the clock unsynchronised. Where that call
is unavailable, the quality is ``rtc`` (a battery-backed clock, trusted but unverified).
Every journal record carries this flag so the hub can judge its timestamp.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from agent.model import ClockQuality

__all__ = ["clock_quality"]

log = logging.getLogger(__name__)

_TIME_ERROR = 5
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _libc.adjtimex.argtypes = [ctypes.c_void_p]
except (OSError, AttributeError):
    _libc = None


def clock_quality() -> ClockQuality:
    """The current :class:`ClockQuality` of the system clock (never raises)."""
    if _libc is None:
        return ClockQuality.RTC
    buf = ctypes.create_string_buffer(256)  # struct timex is 208 bytes on 64-bit Linux
    try:
        state = _libc.adjtimex(buf)
    except OSError:
        return ClockQuality.RTC
    if state < 0:
        return ClockQuality.RTC
    return ClockQuality.UNSYNCED if state == _TIME_ERROR else ClockQuality.SYNCED
