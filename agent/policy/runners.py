"""Policy runners: where an :class:`~agent.policy.stage.ApplyPlan` is executed.

:class:`SubprocessRunner` (the default on terminals) runs the staged apply in a child
process, ``python -m agent.policy.stage`` (:func:`stage_command`: niced, idle I/O
class), so the insert work never holds the daemon's GIL and a crash of the child is just
a failed apply; :class:`InProcessRunner` runs it in the calling thread (tests, tools).
Both raise :class:`~agent.policy.errors.BundleRefused` or
:class:`~agent.policy.errors.ApplyFailed`; the child's exit status maps to them (0 ok,
3 the store's base moved, 4 refused, else failed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.policy.errors import ApplyFailed, BundleRefused, PolicyError, Refusal
from agent.policy.stage import ApplyPlan, execute_plan
from agent.store import StoreError

log = logging.getLogger(__name__)

__all__ = ["ApplyRunner", "InProcessRunner", "SubprocessRunner", "stage_command"]


class ApplyRunner(Protocol):
    """Runs an :class:`ApplyPlan` (in a child process or in this one)."""

    def run(self, plan: ApplyPlan) -> None: ...


class InProcessRunner:
    """Runs plans in the calling thread (tests, tools). Taps then share the GIL with it."""

    def run(self, plan: ApplyPlan) -> None:
        try:
            execute_plan(plan)
        except StoreError as err:
            raise ApplyFailed(Refusal.BASE_MISMATCH, str(err)) from err
        except PolicyError:
            raise
        except Exception as err:
            raise ApplyFailed(Refusal.APPLY_FAILED, f"{type(err).__name__}: {err}") from err


def stage_command(plan_path: str | Path, python: str = sys.executable,
                  background: bool = True, compact: bool = False,
                  batch_rows: int | None = None) -> list[str]:
    """The command line that applies a plan file in a child process (with ``compact``:
    that merges the delta overlay of the store at ``plan_path``). With ``background``
    the child runs at lower CPU priority (``nice 10``) and in the idle I/O class
    (``ionice -c 3``) when those tools exist, so the taps' journal commits go first.

    Lowering a priority is best effort and never stops the apply: where the system
    refuses the call (a seccomp filter without ``setpriority``/``ioprio_set``, e.g.
    systemd's ``SystemCallFilter=~@resources``), ``nice`` warns and runs the command, and
    ``ionice -t`` (ignore failures) runs it too — plain ``ionice`` would exit 1 without
    running it, failing every apply (``docs/decisions.md`` 51)."""
    cmd = [python, "-m", "agent.policy.stage", *(["--compact"] if compact else []),
           str(plan_path), *([str(batch_rows)] if compact and batch_rows else [])]
    if background:
        if shutil.which("ionice"):
            cmd = ["ionice", "-t", "-c", "3", *cmd]
        if shutil.which("nice"):
            cmd = ["nice", "-n", "10", *cmd]
    return cmd


def relay_child_stderr(text: str, who: str) -> None:
    """Pass what a policy child process wrote to stderr on to this process's log: its
    ERROR/CRITICAL lines and tracebacks at ERROR, its WARNING lines at WARNING (the child
    logs with ``logging.basicConfig``'s ``LEVEL:name:message``), and at WARNING what
    ``nice`` or ``ionice`` says when the system refuses to lower the child's priority
    (the child then runs at the daemon's: worth knowing on a slow terminal). Nothing a
    child reports is lost in a pipe, and the test suite's log guard sees it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("ERROR:", "CRITICAL:")):
            log.error("%s: %s", who, line)
        elif line.startswith(("WARNING:", "nice: ", "ionice: ")):
            log.warning("%s: %s", who, line)
        elif line.startswith("Traceback (most recent call last):"):
            tail = next((x for x in lines[i + 1:] if x and not x.startswith(" ")), "")
            log.error("%s crashed: %s", who, tail)


Watcher = Callable[[subprocess.Popen[str], str], contextlib.AbstractContextManager[Any]]
"""``watcher(child, mode)``: a context around a running apply child that may stop and
continue it (:meth:`agent.policy.schedule.MaintenanceSchedule.watch`); entering it yields
a function telling whether the child is stopped now."""

WAIT_STEP_S = 0.5


class SubprocessRunner:
    """Runs plans in ``python -m agent.policy.stage`` (the default on terminals): the
    insert work never holds the daemon's GIL, and a crash of the child is just a failed
    apply. ``timeout_s`` bounds one apply (seconds of the child running: time it spends
    stopped by the ``watcher`` for taps is not counted)."""

    def __init__(self, python: str = sys.executable, timeout_s: float = 3600.0,
                 watcher: Watcher | None = None, snapshot_rows_per_s: int = 0) -> None:
        self.python = python
        self.timeout_s = timeout_s
        self.watcher = watcher
        self.snapshot_rows_per_s = snapshot_rows_per_s
        """Cap on a snapshot's write rate (rows/s, 0: none): :attr:`ApplyPlan.rows_per_s`."""

    def _communicate(self, proc: subprocess.Popen[str], mode: str) -> tuple[str, str]:
        watch = self.watcher(proc, mode) if self.watcher else contextlib.nullcontext()
        with watch as stopped:
            left = self.timeout_s
            while True:
                try:
                    return proc.communicate(timeout=min(WAIT_STEP_S, max(left, 0.01)))
                except subprocess.TimeoutExpired:
                    if stopped is None or not stopped():
                        left -= WAIT_STEP_S
                    if left <= 0:
                        proc.kill()
                        proc.communicate()
                        raise ApplyFailed(Refusal.APPLY_FAILED,
                                          "apply process timed out") from None

    def run(self, plan: ApplyPlan) -> None:
        if plan.mode == "snapshot" and self.snapshot_rows_per_s:
            plan = dataclasses.replace(plan, rows_per_s=self.snapshot_rows_per_s)
        plan_path = Path(plan.store + ".plan.json")
        plan_path.write_text(plan.to_json(), encoding="utf-8")
        try:
            proc = subprocess.Popen(stage_command(plan_path, self.python),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = self._communicate(proc, plan.mode)
        finally:
            plan_path.unlink(missing_ok=True)
        relay_child_stderr(err, "policy apply child")
        last = out.strip().splitlines()[-1] if out.strip() else "{}"
        try:
            result = json.loads(last)
        except json.JSONDecodeError:
            result = {}
        if not isinstance(result, dict):
            result = {}
        if proc.returncode == 0:
            return
        detail = str(result.get("detail") or err.strip()[-300:] or f"exit {proc.returncode}")
        if proc.returncode == 4:
            try:
                refusal = Refusal(result.get("error", Refusal.MALFORMED.value))
            except ValueError:
                refusal = Refusal.MALFORMED
            raise BundleRefused(refusal, detail)
        reason = Refusal.BASE_MISMATCH if proc.returncode == 3 else Refusal.APPLY_FAILED
        raise ApplyFailed(reason, detail)
