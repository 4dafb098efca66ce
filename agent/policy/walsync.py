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

The overlay merge (decision 58) uses the same pieces for its checkpoints:
:func:`checkpoint_sync` writes back the database pages that a checkpoint made with
``synchronous=OFF`` copied out of the WAL — the pages its frames name
(:func:`wal_frames`, read from the WAL's documented format) — one piece at a time, and
then calls ``fdatasync`` on the database file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["CHUNK_BYTES", "HAS_WRITE_BACK", "PERIOD_S", "checkpoint_sync", "dirty_bytes",
           "supported", "trickle_sync", "wal_frames", "write_back"]

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
                 after_chunk: Callable[[int], None] | None = None,
                 pieces: Iterable[int] | None = None) -> int:
    """Make the file at ``path`` durable: write its dirty pages back ``chunk_bytes`` at a
    time, in file order, each piece finished before ``period_s`` seconds of pause and the
    next, then ``datasync`` it (``fdatasync``: the device's cache flushed). Returns how
    many pieces were written. ``after_chunk(offset)`` is called after each piece (tests).

    ``pieces``, when given, are the only offsets (bytes, multiples of ``chunk_bytes``,
    ascending) looked at, and ``datasync`` runs only if one of them was dirty:
    the caller knows where the writes went (:func:`checkpoint_sync`).
    Raises ``OSError`` (the file, an I/O error); where dirty pages cannot be found
    (:func:`supported` False) the whole file is synced at once."""
    fd = os.open(path, os.O_RDONLY)
    try:
        written, blind = 0, pieces is None     # blind: sync whatever was looked at
        offsets = range(0, os.fstat(fd).st_size, chunk_bytes) if pieces is None else pieces
        for off in offsets:
            dirty = dirty_bytes(fd, off, chunk_bytes)
            if dirty is None:
                blind = True                 # no cachestat: fdatasync does it all
                break
            if not dirty:
                continue
            write_back(fd, off, chunk_bytes)
            written += 1
            if after_chunk is not None:
                after_chunk(off)
            time.sleep(period_s)
        if blind or written:
            datasync(fd)
        return written
    finally:
        os.close(fd)


_WAL_MAGIC = (0x377F0682, 0x377F0683)
_WAL_HEADER = struct.Struct(">8I")      # magic, version, page size, seq, salts, checksums
_FRAME_HEADER = struct.Struct(">6I")    # page number, size after commit, salts, checksums


def wal_frames(wal: str | Path) -> tuple[int, list[int]]:
    """The page size (bytes) of the SQLite WAL file ``wal`` and the database page numbers
    (1-based) its current frames hold, in frame order: the frames after the header whose
    salts match the header's (SQLite's own test of a frame; older frames left behind a
    restarted WAL have other salts). ``(0, [])`` for a missing, empty or foreign file.
    Checksums are not verified: the list only steers :func:`checkpoint_sync`, whose
    ``fdatasync`` covers every page anyway. Raises ``OSError`` for a read error."""
    try:
        fd = os.open(wal, os.O_RDONLY)
    except FileNotFoundError:
        return 0, []
    try:
        head = os.pread(fd, _WAL_HEADER.size, 0)
        if len(head) < _WAL_HEADER.size:
            return 0, []
        magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = _WAL_HEADER.unpack(head)
        if magic not in _WAL_MAGIC:
            return 0, []
        pages: list[int] = []
        off = _WAL_HEADER.size
        while True:
            frame = os.pread(fd, _FRAME_HEADER.size, off)
            if len(frame) < _FRAME_HEADER.size:
                break
            pgno, _commit, s1, s2, _c1, _c2 = _FRAME_HEADER.unpack(frame)
            if (s1, s2) != (salt1, salt2):
                break
            pages.append(pgno)
            off += _FRAME_HEADER.size + page_size
        return page_size, pages
    finally:
        os.close(fd)


def checkpoint_sync(db: str | Path, wal: str | Path, *,
                    chunk_bytes: int = CHUNK_BYTES, period_s: float = PERIOD_S,
                    datasync: Callable[[int], None] = os.fdatasync,
                    after_chunk: Callable[[int], None] | None = None) -> int:
    """Make durable what a checkpoint without ``fsync`` (``synchronous=OFF``) copied from
    the WAL ``wal`` into the database file ``db``: the
    pieces of ``chunk_bytes`` holding the pages the WAL's frames name are written back
    one at a time as in :func:`trickle_sync`, then ``db`` is flushed (``fdatasync``) — only if
    one of them was dirty, so it costs two system calls a piece when there is nothing to
    do. Call it before anything else writes to the database, which could restart the WAL
    and so drop the only durable copy of those pages. Returns the pieces written.
    Raises ``OSError``."""
    page_size, pages = wal_frames(wal)
    if not pages:
        return 0
    offsets = sorted({(p - 1) * page_size // chunk_bytes * chunk_bytes for p in pages})
    return trickle_sync(db, chunk_bytes=chunk_bytes, period_s=period_s, datasync=datasync,
                        after_chunk=after_chunk, pieces=offsets)
