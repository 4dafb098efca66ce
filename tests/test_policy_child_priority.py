"""The policy children yield to the taps (``nice 10``, the idle I/O class), and a system
that refuses them the calls to lower their priority still applies every policy.

Found by reading the installed unit against the runner: ``ykt-agent.service`` filters
``~@resources`` (``setpriority``, ``ioprio_set``) with ``EPERM``, and ``stage_command``
ran the child as ``nice -n 10 ionice -c 3 python …``: ``nice`` warns and goes on, but
``ionice`` exits 1 without running the command, so every apply on an installed terminal
failed. Here the kernel's own seccomp filter refuses those calls, as systemd's does
(``docs/decisions.md`` 51).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from agent.policy.parts import write_part
from agent.policy.runners import SubprocessRunner, stage_command
from agent.policy.stage import ApplyPlan
from agent.store import PolicyStore
from tests.fixtures.seccomp import NRS, run_refused

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "ykt-agent.service"

needs_filter = pytest.mark.skipif(platform.machine() not in NRS,
                                  reason="seccomp numbers known for x86_64 and aarch64")


def _snapshot_plan(d: Path) -> ApplyPlan:
    """A small first snapshot (a terminal with no policy yet) and its part files."""
    write_part(d / "ent", "entitlements", "snapshot",
               ((f"{i:032x}", "elderly", "", "") for i in range(50)))
    write_part(d / "hot", "hotlist", "snapshot", [("f" * 32, "card", "lost", "")])
    info = {"channel": "city/370302/bus", "version": 7, "hash": "7" * 64,
            "expires": "2036-01-01T00:00:00Z"}
    return ApplyPlan(store=str(d / "store.db"), mode="snapshot", info=info,
                     entitlements=str(d / "ent"), hotlist=str(d / "hot"),
                     totals={"entitlements": 50, "hotlist": 1})


@needs_filter
@pytest.mark.skipif(shutil.which("ionice") is None, reason="needs util-linux ionice")
def test_a_policy_applies_where_lowering_the_priority_is_refused(tmp_path: Path) -> None:
    # the filter is real: under it, the very command the runner used to build fails
    probe = run_refused("import os\nos.execvp('ionice', ['ionice', '-c', '3', 'true'])\n")
    assert probe.returncode == 1 and "ioprio_set failed" in probe.stderr
    plan = _snapshot_plan(tmp_path)
    # the daemon's runner, in a process whose nice, ionice and apply child inherit the filter
    r = run_refused("import json, sys\n"
                    "from agent.policy.runners import SubprocessRunner\n"
                    "from agent.policy.stage import ApplyPlan\n"
                    "SubprocessRunner().run(ApplyPlan.from_json(sys.stdin.read()))\n"
                    "print(json.dumps({'applied': True}))\n", plan.to_json())
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"applied": True}
    store = PolicyStore(plan.store)
    try:
        assert store.info.version == 7
        assert store.entitlements(f"{3:032x}", date(2026, 11, 27)) == {"elderly"}
        assert store.hotlisted("f" * 32) == "lost"
    finally:
        store.close()


def test_the_apply_child_runs_at_nice_10_in_the_idle_io_class(tmp_path: Path) -> None:
    """What the child runs with: a stand-in ``python`` records the priorities the
    runner's command line gave it, then runs the real apply."""
    if shutil.which("nice") is None or shutil.which("ionice") is None:
        pytest.skip("needs coreutils nice and util-linux ionice")
    seen = tmp_path / "seen.json"
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    f"printf '{{\"nice\": %s, \"io\": \"%s\"}}' \"$(nice)\" "
                    f"\"$(ionice -p $$)\" > {seen}\n"
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    plan = _snapshot_plan(tmp_path)
    SubprocessRunner(python=str(fake)).run(plan)
    got = json.loads(seen.read_text())
    assert got == {"nice": min(19, before + 10), "io": "idle"}
    assert stage_command("p.json")[:5] == ["nice", "-n", "10", "ionice", "-t"]


def _group(name: str) -> set[str]:
    """The system calls of a systemd group (``systemd-analyze syscall-filter``)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                         text=True, check=True).stdout
    return {w for w in re.findall(r"^\s+([a-z0-9_]+)\s*$", out, re.M)}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_agent_unit_lets_its_children_lower_their_priority() -> None:
    """The unit's ``SystemCallFilter=`` lines, read in order as systemd does (the first is
    an allow list, ``~`` lines remove, later plain lines add back): ``setpriority`` and
    ``ioprio_set`` stay allowed, and the real-time calls stay refused."""
    allowed: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1]
        deny = value.startswith("~")
        names: set[str] = set()
        for word in value.lstrip("~").split():
            names |= _group(word) if word.startswith("@") else {word}
        if deny:
            allowed -= names
        else:
            allowed |= names
    assert {"setpriority", "ioprio_set"} <= allowed
    assert not {"sched_setscheduler", "sched_setattr"} & allowed
