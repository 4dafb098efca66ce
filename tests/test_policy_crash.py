"""``kill -9`` of the apply process at each phase: on restart the store is consistent and
holds exactly the old or exactly the new version; a retry then completes the apply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from datetime import date
from pathlib import Path

import pytest

from agent.model import Reason
from agent.policy.apply import SubprocessRunner
from agent.policy.errors import ApplyFailed, Refusal
from agent.policy.manifest import Envelope, Manifest
from agent.policy.stage import ApplyPlan, execute_plan
from agent.store import PolicyInfo, PolicyStore, active_generation
from sync.hub.policy import BundleSources
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import PolicyEnv

OLD_N, KEEP, NEW_N = 50_000, 40_000, 40_000


def _keys(prefix: int, n: int) -> list[str]:
    return [f"{prefix:04x}{i:028x}" for i in range(n)]


def _plan(parts: Path, m: Manifest, store: Path, mode: str, info: PolicyInfo,
          expect: PolicyInfo | None = None) -> ApplyPlan:
    def part(name: str) -> str:
        ref = m.part(name)
        assert ref is not None
        return str(parts / ref.sha256)
    suffix = ".delta" if mode == "delta" else ""
    return ApplyPlan(store=str(store), mode=mode, info=asdict(info),
                     expect=None if expect is None else asdict(expect),
                     entitlements=part("entitlements" + suffix),
                     hotlist=part("hotlist" + suffix),
                     totals=dict(m.totals) if mode == "snapshot" else {})


def _versions(env: PolicyEnv) -> tuple[ApplyPlan, ApplyPlan, PolicyInfo, PolicyInfo, str]:
    """Publish v1 (50k entitlements) and v2 (10k removed, 40k added); apply v1 to a store;
    return a snapshot plan and a delta plan for v2, both infos, and the store path."""
    old = _keys(1, OLD_N)
    new = old[:KEEP] + _keys(2, NEW_N)
    manifests: list[Manifest] = []
    infos: list[PolicyInfo] = []
    for keys in (old, new):
        rows = [{"holder_key": k, "name": "elderly"} for k in keys]
        env.build(BundleSources(entitlements=env.source("ent", rows),
                                hotlist=env.source("hot", [{"key": keys[-1], "kind": "card"}])))
        envelope = Envelope.parse(env.repo.latest_envelope())
        manifests.append(envelope.manifest_model())
        infos.append(envelope.policy_info())
    parts, store = env.repo.parts_dir, env.tmp / "term" / "store.db"
    execute_plan(_plan(parts, manifests[0], store, "snapshot", infos[0]))
    snap = _plan(parts, manifests[1], store, "snapshot", infos[1])
    delta = _plan(parts, manifests[1], store, "delta", infos[1], infos[0])
    return snap, delta, infos[0], infos[1], str(store)


def _kill_at(plan: ApplyPlan, phase: str, tmp: Path) -> None:
    plan_path = tmp / "plan.json"
    plan_path.write_text(plan.to_json())
    proc = subprocess.Popen([sys.executable, "-m", "agent.policy.stage", str(plan_path),
                             "--pause-after", phase], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:      # bounded: the child pauses forever at the phase
        seen.append(json.loads(line)["phase"])
        if seen[-1].startswith(phase):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert seen and seen[-1].startswith(phase), seen


def _check_consistent(store_path: str, i1: PolicyInfo, i2: PolicyInfo) -> int:
    store = PolicyStore(store_path)
    try:
        store.collect_garbage()
        assert store.integrity_problems() == []
        counts = store.counts()
        v = store.info.version
        first_new = _keys(2, 1)[0]
        last_old = _keys(1, OLD_N)[-1]
        day = date(2026, 11, 25)
        if v == 1:
            assert store.info == i1
            assert counts == {"entitlements": OLD_N, "hotlist": 1}
            assert not store.entitlements(first_new, day)
            assert store.hotlisted(last_old)
        else:
            assert store.info == i2
            assert counts == {"entitlements": KEEP + NEW_N, "hotlist": 1}
            assert store.entitlements(first_new, day) == {"elderly"}
            assert not store.entitlements(last_old, day) and not store.hotlisted(last_old)
        leftovers = [p.name for p in Path(store_path).parent.iterdir() if ".staging" in p.name]
        assert leftovers == []
        return v
    finally:
        store.close()


LAST_OLD, FIRST_NEW = _keys(1, OLD_N)[-1], _keys(2, 1)[0]
DAY = date(2026, 11, 25)
OLD_VIEW = ("lost", frozenset())              # (hotlisted(LAST_OLD), entitlements(FIRST_NEW))
NEW_VIEW = (None, frozenset({"elderly"}))


def _view(store: PolicyStore) -> tuple[str | None, frozenset[str]]:
    return store.hotlisted(LAST_OLD), store.entitlements(FIRST_NEW, DAY)


@pytest.mark.parametrize(("mode", "phase", "expect"), [
    ("snapshot", "entitlements", 1),   # while loading the new generation
    ("snapshot", "staged", 1),         # complete, not yet switched
    ("snapshot", "switched", 2),       # switched: the reader is still on the old
    ("delta", "entitlements+", 1),     # inside the delta transaction
    ("delta", "committed", 2),         # committed in the same file: the reader's snapshot
])                                     # is still the old one
def test_kill9_during_apply_leaves_old_or_new(policy_env: PolicyEnv, mode: str, phase: str,
                                              expect: int) -> None:
    snap, delta, i1, i2, store_path = _versions(policy_env)
    daemon = PolicyStore(store_path)         # the terminal keeps reading meanwhile
    try:
        daemon.hold()                        # as the applier does before an apply
        _kill_at(snap if mode == "snapshot" else delta, phase, policy_env.tmp)
        # whatever the phase, the open reader sees the old policy, rows and identity
        # together, until it refreshes
        assert daemon.info == i1 and _view(daemon) == OLD_VIEW
        assert daemon.refresh() is (expect == 2)
        assert daemon.info == (i1 if expect == 1 else i2)
        assert _view(daemon) == (OLD_VIEW if expect == 1 else NEW_VIEW)
        assert _check_consistent(store_path, i1, i2) == expect
        # the retry completes the apply
        if expect == 1:
            execute_plan(snap if mode == "snapshot" else delta)
        assert _check_consistent(store_path, i1, i2) == 2
        assert daemon.refresh() is (expect == 1)
        assert daemon.info == i2 and _view(daemon) == NEW_VIEW
    finally:
        daemon.close()


def test_kill9_of_the_apply_child_then_the_applier_retries(policy_env: PolicyEnv,
                                                            tmp_path: Path) -> None:
    """The production path: :class:`SubprocessRunner` applies a snapshot in a child that
    is killed with SIGKILL once the new generation is staged; the applier reports a
    retryable failure and keeps v1; offering the same envelope again applies it."""
    env = policy_env
    t = env.terminal(runner=SubprocessRunner())
    env.build(env.population_sources())
    assert t.applier.offer(env.repo.latest_envelope(), None) is not None
    victim, other = env.pop.tagged("standard")[:2]
    for holder in (victim, other):                 # v2, v3: the terminal takes the snapshot
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": holder.card_id}]),
                                merge=True))
    v3 = env.repo.latest_envelope()
    pid_file = tmp_path / "stage.pid"
    wrapper = tmp_path / "python"        # the runner's interpreter: pauses after staging
    wrapper.write_text(f'#!/bin/sh\necho $$ > "{pid_file}"\n'
                       f'exec "{sys.executable}" "$@" --pause-after staged\n')
    wrapper.chmod(0o755)
    runner = SubprocessRunner(python=str(wrapper), timeout_s=60)
    t.applier.runner = runner
    errors: list[BaseException] = []

    def offer() -> None:
        try:
            t.applier.offer(v3, None)
        except BaseException as err:
            errors.append(err)
    worker = threading.Thread(target=offer)
    worker.start()
    store = Path(t.store.path)

    def staged() -> bool:
        return pid_file.exists() and any(
            p.name.startswith(store.name + ".g3-") and not p.name.endswith(".staging")
            for p in store.parent.iterdir())
    wait_until(staged, 30, "the child to stage generation 3")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    worker.join(30)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ApplyFailed), errors
    assert errors[0].refusal is Refusal.APPLY_FAILED and errors[0].retryable
    # the old policy is fully in force, for the reader and for new taps
    assert t.store.info.version == 1 and not t.store.refresh()
    assert active_generation(store) == t.store.active_path
    assert t.tap(victim).decision.product == "standard"
    # the retry, through the applier (staged parts are reused), completes the apply
    runner.python = sys.executable
    applied = t.applier.offer(v3, None)
    assert applied is not None and applied.mode == "snapshot" and applied.info.version == 3
    assert t.store.info.version == 3 and t.store.integrity_problems() == []
    env.clock.t += 120
    assert t.tap(victim).decision.reason is Reason.HOTLISTED
    assert t.tap(other).decision.reason is Reason.HOTLISTED
    leftovers = sorted(p.name for p in store.parent.iterdir()
                       if p.name.startswith(store.name + ".g") and p != t.store.active_path
                       and not p.name.startswith(t.store.active_path.name))
    assert leftovers == []                # the killed child's generation was collected
