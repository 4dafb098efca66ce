"""Stopping the child processes the simulator and tests start (broker, pcscd, hub)."""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["stop_process"]


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
