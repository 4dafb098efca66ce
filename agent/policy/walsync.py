"""A delta's commit made durable in small pieces instead of one burst (issue 15).

SQLite with ``synchronous=FULL`` ends a commit with one ``fsync`` of the WAL: a 5,000-row
delta's ~320 KB reach the device at once, and a tap whose journal ``fdatasync`` comes
then waits behind all of it (the delta row of the storage bench, ``docs/decisions.md``
50 and 56). The apply child therefore commits a delta with ``synchronous=NORMAL`` (no
``fsync`` in the commit; SQLite's WAL stays consistent whatever happens) and then calls
:func:`trickle_sync` on the WAL: it finds the file's dirty pages with Linux's
``cachestat`` (6.5 and later), writes them back one :data:`CHUNK_BYTES` piece at a time
with ``sync_file_range`` — each piece waited for, a :data:`PERIOD_S` pause after it —
and ends with ``fdatasync``, which then has only the device's cache flush left to do.
The child reports the delta applied only after that, so the commit is exactly as
durable as before, just not in one burst. Where ``cachestat`` or ``sync_file_range`` is
missing (Debian 12's own 6.1 kernel, not Linux), :func:`supported` is False and the
delta commits with SQLite's ``fsync`` as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CHUNK_BYTES", "HAS_WRITE_BACK", "PERIOD_S", "dirty_bytes", "supported",
           "trickle_sync", "write_back"]

CHUNK_BYTES = 32 * 1024
"""Bytes written back at a time: a tap's flush meets at most this much of a delta. On the
emulated A1 card (10 MB/s) a piece is 3.2 ms of the card; with :data:`PERIOD_S` the
write-back runs at most 6.4 MB/s, a 5,000-row delta's WAL in ~55 ms."""
PERIOD_S = 0.005
"""Pause after each piece written (seconds): room for a tap's journal write between two."""

_SYS_CACHESTAT = 451         # the same number on x86-64, arm64 and 32-bit arm
_SYNC_WRITE_AND_WAIT = 1 | 2 | 4    # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def _libc_function(name: str) -> Any:
    """libc's function ``name`` (None where it or libc is missing)."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


_SYNC_FILE_RANGE = _libc_function("sync_file_range")
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_SYSCALL = _libc_function("syscall")

HAS_WRITE_BACK = _SYNC_FILE_RANGE is not None
"""Whether :func:`write_back` does anything here (Linux's ``sync_file_range``)."""


def write_back(fd: int, offset: int = 0, length: int = 0) -> None:
    """Write the open file ``fd``'s dirty pages in ``[offset, offset + length)``
    (``length`` 0: to the end) back to the device and wait for them, after waiting for any
    writeback already under way (``sync_file_range`` with ``WAIT_BEFORE | WRITE |
    WAIT_AFTER``): data only, no metadata, no cache flush. A no-op where
    :data:`HAS_WRITE_BACK` is False. Raises ``OSError``."""
    if _SYNC_FILE_RANGE is not None and _SYNC_FILE_RANGE(
            fd, offset, length, _SYNC_WRITE_AND_WAIT) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def dirty_bytes(fd: int, offset: int = 0, length: int = 0) -> int | None:
    """Bytes of the open file ``fd`` in ``[offset, offset + length)`` (``length`` 0: to
    the end) that are dirty or being written back in the page cache, by ``cachestat``;
    None where the call does not exist. Raises ``OSError`` for any other failure."""
    if _SYSCALL is None:
        return None
    rng, st = _Range(offset, length), _Stat()
    if _SYSCALL(ctypes.c_long(_SYS_CACHESTAT), ctypes.c_int(fd), ctypes.byref(rng),
                ctypes.byref(st), ctypes.c_uint(0)) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM):      # an old kernel, a seccomp filter
            return None
        raise OSError(err, os.strerror(err))
    return int(st.dirty + st.writeback) * _PAGE


def supported(directory: str | Path) -> bool:
    """Whether :func:`trickle_sync` can find and write back dirty pages of files in
    ``directory`` (the kernel has ``cachestat`` and ``sync_file_range``). Never raises."""
    if not HAS_WRITE_BACK:
        return False
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        return dirty_bytes(fd) is not None
    except OSError:
        return False
    finally:
        os.close(fd)


def trickle_sync(path: str | Path, *, chunk_bytes: int = CHUNK_BYTES,
                 period_s: float = PERIOD_S,
                 datasync: Callable[[int], None] = os.fdatasync,
                 after_chunk: Callable[[int], None] | None = None) -> int:
    """Make the file at ``path`` durable: write its dirty pages back ``chunk_bytes`` at a
    time, in file order, each piece finished before ``period_s`` seconds of pause and the
    next, then ``datasync`` it (``fdatasync``: the device's cache flushed). Returns how
    many pieces were written. ``after_chunk(offset)`` is called after each piece (tests).
    Raises ``OSError`` (the file, an I/O error); where dirty pages cannot be found
    (:func:`supported` False) the whole file is synced at once."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = 0
        size = os.fstat(fd).st_size
        for off in range(0, size, chunk_bytes):
            dirty = dirty_bytes(fd, off, chunk_bytes)
            if dirty is None:
                break                        # no cachestat: fdatasync does it all
            if not dirty:
                continue
            write_back(fd, off, chunk_bytes)
            pieces += 1
            if after_chunk is not None:
                after_chunk(off)
            time.sleep(period_s)
        datasync(fd)
        return pieces
    finally:
        os.close(fd)
