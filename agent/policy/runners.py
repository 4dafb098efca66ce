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

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Protocol

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
                  background: bool = True, compact: bool = False) -> list[str]:
    """The command line that applies a plan file in a child process (with ``compact``:
    that merges the delta overlay of the store at ``plan_path``). With ``background``
    the child runs at lower CPU priority (``nice 10``) and in the idle I/O class
    (``ionice -c 3``) when those tools exist, so the taps' journal commits go first."""
    cmd = [python, "-m", "agent.policy.stage", *(["--compact"] if compact else []),
           str(plan_path)]
    if background:
        if shutil.which("ionice"):
            cmd = ["ionice", "-c", "3", *cmd]
        if shutil.which("nice"):
            cmd = ["nice", "-n", "10", *cmd]
    return cmd


def relay_child_stderr(text: str, who: str) -> None:
    """Pass what a policy child process wrote to stderr on to this process's log: its
    ERROR/CRITICAL lines and tracebacks at ERROR, its WARNING lines at WARNING (the child
    logs with ``logging.basicConfig``'s ``LEVEL:name:message``). Nothing a child reports
    is lost in a pipe, and the test suite's log guard sees it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("ERROR:", "CRITICAL:")):
            log.error("%s: %s", who, line)
        elif line.startswith("WARNING:"):
            log.warning("%s: %s", who, line)
        elif line.startswith("Traceback (most recent call last):"):
            tail = next((x for x in lines[i + 1:] if x and not x.startswith(" ")), "")
            log.error("%s crashed: %s", who, tail)


class SubprocessRunner:
    """Runs plans in ``python -m agent.policy.stage`` (the default on terminals): the
    insert work never holds the daemon's GIL, and a crash of the child is just a failed
    apply. ``timeout_s`` bounds one apply (seconds)."""

    def __init__(self, python: str = sys.executable, timeout_s: float = 3600.0) -> None:
        self.python = python
        self.timeout_s = timeout_s

    def run(self, plan: ApplyPlan) -> None:
        plan_path = Path(plan.store + ".plan.json")
        plan_path.write_text(plan.to_json(), encoding="utf-8")
        try:
            proc = subprocess.Popen(stage_command(plan_path, self.python),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise ApplyFailed(Refusal.APPLY_FAILED, "apply process timed out") from None
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
