"""One daemon per data directory: an exclusive ``fcntl`` lock on ``DATA_DIR/agent.lock``.

Two daemons on one journal both believe they own the next sequence number: the second
one's records collide with the first's (``UNIQUE constraint failed: records.seq``) and
the first fails every tap from then on. So :class:`DataDirLock` is taken before the
journal is opened and held until the daemon exits; the kernel drops it when the process
dies, even by ``kill -9``, so a stale lock file never blocks a restart. The file holds the
holder's PID for the error message. Read-only commands (``ykt journal show``, status)
never take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.errors import YktError

__all__ = ["DataDirBusy", "DataDirLock"]


class DataDirBusy(YktError, RuntimeError):
    """Another process holds the data directory's lock (``pid`` is its PID, 0 if unknown)."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


class DataDirLock:
    """The exclusive lock on ``data_dir``; :meth:`acquire`, then :meth:`release` (safe twice).

    Raises :class:`DataDirBusy` naming the running PID when another process holds it, and
    ``OSError`` when the directory cannot be created or the lock file opened.
    """

    FILE = "agent.lock"

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / self.FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"PID {pid}" if pid else "another process"
            raise DataDirBusy(
                f"another ykt agent ({who}) is running on {self.path.parent}: stop it first "
                "(systemctl stop ykt-agent), or use the read-only commands "
                "(ykt journal show, ykt agent status)", pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)          # closing drops the lock; the file stays (no unlink race)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    except OSError:
        return 0
