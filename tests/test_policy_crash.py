"""``kill -9`` of the apply process at each phase: on restart the store is consistent and
holds exactly the old or exactly the new version; a retry then completes the apply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from agent.policy.manifest import Envelope, Manifest, canonical, sha256_hex
from agent.policy.stage import ApplyPlan, execute_plan
from agent.store import PolicyInfo, PolicyStore
from sync.hub.policy import BundleSources
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
    return ApplyPlan(store=str(store), mode=mode, info=_asdict(info),
                     expect=None if expect is None else _asdict(expect),
                     entitlements=part("entitlements" + suffix),
                     hotlist=part("hotlist" + suffix), totals=dict(m.totals))


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
        signed = json.loads(env.repo.latest_envelope())["manifest"]["signed"]
        manifests.append(Envelope.parse(env.repo.latest_envelope()).manifest_model())
        infos.append(PolicyInfo(signed["channel"], signed["version"],
                                sha256_hex(canonical(signed)), signed["expires"]))
    parts, store = env.repo.parts_dir, env.tmp / "term" / "store.db"
    execute_plan(_plan(parts, manifests[0], store, "snapshot", infos[0]))
    snap = _plan(parts, manifests[1], store, "snapshot", infos[1])
    delta = _plan(parts, manifests[1], store, "delta", infos[1], infos[0])
    return snap, delta, infos[0], infos[1], str(store)


def _asdict(i: PolicyInfo) -> dict[str, Any]:
    return {"channel": i.channel, "version": i.version, "hash": i.hash, "expires": i.expires}


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


@pytest.mark.parametrize(("mode", "phase", "expect"), [
    ("snapshot", "entitlements", 1),    # while loading the new generation
    ("snapshot", "staged", 1),          # complete, not yet switched
    ("snapshot", "switched", 2),        # switched, process not yet finished
    ("delta", "entitlements+", 1),      # inside the delta transaction
    ("delta", "committed", 2),
])
def test_kill9_during_apply_leaves_old_or_new(policy_env: PolicyEnv, mode: str, phase: str,
                                              expect: int) -> None:
    snap, delta, i1, i2, store_path = _versions(policy_env)
    daemon = PolicyStore(store_path)         # the terminal keeps reading meanwhile
    try:
        _kill_at(snap if mode == "snapshot" else delta, phase, policy_env.tmp)
        assert daemon.hotlisted(_keys(1, OLD_N)[-1]) is not None or daemon.refresh()
        assert _check_consistent(store_path, i1, i2) == expect
        # the retry completes the apply
        if expect == 1:
            execute_plan(snap if mode == "snapshot" else delta)
        assert _check_consistent(store_path, i1, i2) == 2
        daemon.refresh()
        assert daemon.info == i2
        assert daemon.entitlements(_keys(2, 1)[0], date(2026, 1, 1))
    finally:
        daemon.close()
