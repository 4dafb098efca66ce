"""Starting, waiting for and stopping the child processes the simulator and tests start
(broker, pcscd, PostgreSQL, hub): one launch, one readiness wait, one stop."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["Service", "launch", "stop_process", "wait_until"]


def launch(cmd: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its stdout and stderr appended to ``log_path``."""
    with open(log_path, "ab") as log_file:    # the child keeps its own descriptor
        return subprocess.Popen(list(cmd), stdout=log_file, stderr=log_file)


def wait_until(ready: Callable[[], bool], *, timeout: float, interval: float,
               failure: str, proc: subprocess.Popen[Any] | None = None,
               log_path: Path | None = None) -> None:
    """Poll ``ready()`` every ``interval`` seconds until it is true.

    Raises ``RuntimeError`` (naming ``log_path``) when ``proc`` exits first, and
    ``TimeoutError(failure)`` when ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            name = Path(str(proc.args[0] if isinstance(proc.args, list) else proc.args)).name
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(failure)
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any] | None, *, kill: bool = False,
                 grace_s: float = 5.0) -> int | None:
    """Stop ``proc``: SIGTERM (SIGKILL with ``kill``), wait up to ``grace_s`` seconds, then
    SIGKILL and reap. A process that already exited is only reaped. Returns its exit code
    (None for ``proc=None``). Never leaves a zombie."""
    if proc is None:
        return None
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Service:
    """A context manager over ``start()`` and ``close()``: ``with Mosquitto() as b: …``."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
