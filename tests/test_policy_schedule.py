"""Snapshots and merges keep out of the busy hours and yield to taps (issue 15).

Real SQLite stores, real signed bundles from a hub repository, real apply and merge
children; the decision time is a settable clock, never the machine's. No timing is
asserted: the tests wait on counters and states.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pytest

from agent.policy.apply import InProcessRunner, PolicyApplier
from agent.policy.compaction import Compactor
from agent.policy.errors import Refusal, SnapshotDeferred
from agent.policy.runners import SubprocessRunner
from agent.policy.schedule import BusyHours, MaintenanceSchedule, parse_span
from agent.policy.stage import ApplyPlan
from agent.store import PolicyInfo, PolicyStore
from simulator.broker import Mosquitto
from sync.downlink import Downlink
from sync.hub.policy import BundleSources
from sync.link import MqttSettings
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, TZ, FixedClock, PolicyEnv

BUSY = ["06:00-22:00"]


def at(hour: int, minute: int = 0) -> float:
    """Epoch seconds of 2026-11-25 ``hour:minute`` in Shanghai."""
    return datetime(2026, 11, 25, hour, minute, tzinfo=TZ).timestamp()


class Taps:
    """Taps that keep coming: a monotonic clock that moves only when a tap is reported."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def schedule(clock: FixedClock, mono: Taps | None = None, **kw: float) -> MaintenanceSchedule:
    return MaintenanceSchedule(busy=BusyHours.parse(BUSY), timezone="Asia/Shanghai",
                               now=clock, mono=mono or Taps(), **kw)


def scheduled_applier(env: PolicyEnv, store: PolicyStore, sched: MaintenanceSchedule,
                      compactor: Compactor | None = None) -> PolicyApplier:
    return PolicyApplier(store, channel=CHANNEL, anchor=env.anchor, runner=InProcessRunner(),
                         clock=env.clock, schedule=sched, compactor=compactor,
                         staging_dir=store.path.parent / "staging")


# -- busy hours ---------------------------------------------------------------------------
def test_busy_hours_parse_wrap_and_refuse() -> None:
    assert parse_span("06:00-22:00") == (360, 1320)
    night = BusyHours.parse(["22:00-06:00"])
    assert night.busy(23 * 60) and night.busy(0) and night.busy(5 * 60 + 59)
    assert not night.busy(6 * 60) and not night.busy(12 * 60)
    assert night.minutes_left(23 * 60) == 7 * 60 and night.minutes_left(12 * 60) == 0
    assert BusyHours.parse(["18:00-24:00"]).busy(23 * 60 + 59)
    for bad in (["6-22"], ["25:00-06:00"], ["06:00-06:00"], ["00:00-24:00"],
                ["00:00-12:00", "12:00-24:00"]):
        with pytest.raises(ValueError):
            BusyHours.parse(bad)


def _validate(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", str(cfg)],
                          capture_output=True, text=True, check=False, timeout=60)


def test_busy_hours_are_a_validated_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[terminal]\ndata_dir = "{tmp_path / "data"}"\ndemo = true\n'
                   '[mqtt]\nenabled = false\n[maintenance]\nbusy_hours = ["06:00-22:00", '
                   '"7-9"]\n', encoding="utf-8")
    r = _validate(cfg)
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "maintenance.busy_hours" in text and "'7-9' is not HH:MM-HH:MM" in text
    assert f"{cfg}:7" in text and "Traceback" not in text
    cfg.write_text(f'[terminal]\ndata_dir = "{tmp_path / "data"}"\ndemo = true\n'
                   '[mqtt]\nenabled = false\n[maintenance]\nbusy_hours = ["22:00-06:00"]\n'
                   'quiet_s = 5\nexpiry_margin_s = 7200\n', encoding="utf-8")
    r = _validate(cfg)
    assert r.returncode == 0, r.stdout + r.stderr


# -- the must-hold: deferred in busy hours, never past expiry, never without a policy ----
def test_snapshot_waits_for_the_busy_hours_while_deltas_apply_at_once(
        policy_env: PolicyEnv) -> None:
    env = policy_env
    env.clock.t = at(8)                                   # the morning rush
    base = env.terminal()
    env.build(env.population_sources())
    v1 = env.repo.latest_envelope()
    assert base.applier.offer(v1, None) is not None
    sched = schedule(env.clock)
    applier = scheduled_applier(env, base.store, sched)
    # a current terminal: a hotlist delta applies at once, busy hours or not
    lost = env.pop.tagged("standard")[0]
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": lost.card_id}]), merge=True))
    applied = applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "delta"
    assert base.tap(lost).decision.reason.value == "hotlisted"
    # a terminal that is behind (still at v1) is offered v4: that is the snapshot
    behind = PolicyStore(env.tmp / "behind" / "store.db")
    try:
        first = schedule(env.clock)          # 08:00, but no policy yet: at once
        scheduled_applier(env, behind, first).offer(v1, None)
        assert behind.info.version == 1 and first.deferred == 0
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": env.pop.tagged(
            "standard")[1].card_id}]), merge=True))
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": env.pop.tagged(
            "standard")[2].card_id}]), merge=True))
        late = schedule(env.clock)
        behind_applier = scheduled_applier(env, behind, late)
        for minute in (0, 1, 30):          # taps keep coming all morning: never started
            env.clock.t = at(8, minute)
            late.activity()
            with pytest.raises(SnapshotDeferred) as err:
                behind_applier.offer(env.repo.latest_envelope(), None)
            assert err.value.refusal is Refusal.DEFERRED
            assert err.value.retry_after_s == at(22) - env.clock.t   # until the rush is over
        assert behind.info.version == 1 and late.deferred == 3
        assert not list((behind.path.parent / "staging").iterdir())   # nothing written
        assert [g for g in behind.path.parent.glob("store.db.g*")
                if not g.name.endswith(("-wal", "-shm"))] == [behind.active_path]
        env.clock.t = at(22, 0)            # the depot at night: it goes in
        applied = behind_applier.offer(env.repo.latest_envelope(), None)
        assert applied is not None and applied.mode == "snapshot"
        assert behind.info.version == 4
    finally:
        behind.close()


def test_snapshot_goes_in_near_expiry_and_on_a_terminal_without_policy(
        policy_env: PolicyEnv) -> None:
    env = policy_env
    env.clock.t = at(9)
    env.build(env.population_sources(), expires_s=7200)         # expires at 11:00
    fresh = PolicyStore(env.tmp / "fresh" / "store.db")          # no policy yet
    try:
        sched = schedule(env.clock, expiry_margin_s=3600)
        applier = scheduled_applier(env, fresh, sched)
        assert sched.busy_now()
        applied = applier.offer(env.repo.latest_envelope(), None)
        assert applied is not None and applied.mode == "snapshot" and sched.deferred == 0
        # v1 (expiring 11:00) applied; a terminal behind it gets v3 as a snapshot
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": "AB" * 16}]),
                                merge=True))
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": "CD" * 16}]),
                                merge=True))
        with pytest.raises(SnapshotDeferred) as err:             # 09:00: 1 h to the deadline
            applier.offer(env.repo.latest_envelope(), None)
        assert err.value.retry_after_s == at(10) - at(9)        # the deadline, not 22:00
        env.clock.t = at(10, 0) + 1            # within the margin of v1's expiry: busy or not
        applied = applier.offer(env.repo.latest_envelope(), None)
        assert applied is not None and applied.mode == "snapshot"
        assert fresh.info.version == 3
    finally:
        fresh.close()


def test_a_deferred_snapshot_is_retried_when_the_busy_hours_end(
        policy_env: PolicyEnv, broker: Mosquitto) -> None:
    env = policy_env
    env.clock.t = at(21, 59)
    env.build(env.population_sources())
    store = PolicyStore(env.tmp / "T9" / "store.db")
    seed = scheduled_applier(env, store, schedule(FixedClock(at(3))))   # applied at night
    assert seed.offer(env.repo.latest_envelope(), None) is not None
    for n in (1, 2):
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": f"{n:02d}" * 16}]),
                                merge=True))
    sched = schedule(env.clock)
    applier = scheduled_applier(env, store, sched)
    down = Downlink(applier, settings=MqttSettings(host=broker.host, port=broker.port),
                    client_id="T9-policy", retry_min_s=0.05)
    down.start()
    try:
        env.repo.publish(MqttSettings(host=broker.host, port=broker.port))
        wait_until(lambda: down.status()["policy_state"] == "deferred", 20, "deferral")
        assert down.status()["policy_refusal"] == "deferred" and store.info.version == 1
        env.clock.t = at(22, 0)                   # the retry (after 60 s) finds it quiet
        down.offer(env.repo.latest_envelope())    # ... or a newer manifest wakes it at once
        wait_until(lambda: store.info.version == 3, 30, "the snapshot after the busy hours")
        wait_until(lambda: down.status()["policy_state"] == "applied", 10, "state applied")
    finally:
        down.stop()
        applier.close()
        store.close()


# -- yielding: the snapshot child and the merge child stop for taps ------------------------
def test_snapshot_child_stops_while_taps_come_and_finishes_when_quiet(
        policy_env: PolicyEnv) -> None:
    env = policy_env
    env.clock.t = at(23)                                  # outside the busy hours
    env.build(env.population_sources())
    store = PolicyStore(env.tmp / "T5" / "store.db")
    seed = scheduled_applier(env, store, schedule(env.clock))
    seed.offer(env.repo.latest_envelope(), None)           # v1: a policy in force
    mono = Taps()
    sched = schedule(env.clock, mono, quiet_s=5.0)
    runner = SubprocessRunner(watcher=sched.watcher(lambda: store.info))
    parts = _snapshot_parts(env)
    plan = ApplyPlan(store=str(store.path), mode="snapshot",
                     info=asdict(PolicyInfo(CHANNEL, 2, "2" * 64, store.info.expires)),
                     entitlements=parts["entitlements"], hotlist=parts["hotlist"])
    sched.activity()                                      # a tap just came
    done = threading.Event()
    errors: list[BaseException] = []

    def apply() -> None:
        try:
            runner.run(plan)
        except BaseException as err:
            errors.append(err)
        done.set()

    th = threading.Thread(target=apply)
    th.start()
    try:
        wait_until(lambda: sched.pauses >= 1, 20, "the snapshot child to be stopped")
        for _ in range(20):                               # taps keep coming: still stopped
            sched.activity()
            assert not done.wait(0.05)
        store.refresh()
        assert store.info.version == 1
    finally:
        mono.t += 10                                      # quiet from here on
        th.join(60)
    assert done.is_set() and not errors
    store.refresh()
    assert store.info.version == 2
    store.close()


def _snapshot_parts(env: PolicyEnv) -> dict[str, str]:
    from agent.policy.manifest import Envelope
    m = Envelope.parse(env.repo.latest_envelope()).manifest_model()
    parts = {p.name: str(env.repo.parts_dir / p.sha256) for p in m.parts}
    return {"entitlements": parts["entitlements"], "hotlist": parts["hotlist"]}


def test_merge_waits_outside_the_busy_hours(policy_env: PolicyEnv) -> None:
    env = policy_env
    env.clock.t = at(8)
    env.build(env.population_sources())
    store = PolicyStore(env.tmp / "T7" / "store.db")
    sched = schedule(env.clock)
    merge = Compactor(store, quiet_s=0.0, allowed=sched.merge_allowed)
    applier = scheduled_applier(env, store, sched, compactor=merge)
    try:
        assert applier.offer(env.repo.latest_envelope(), None) is not None   # no policy yet
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": "EF" * 16}]),
                                merge=True))
        applied = applier.offer(env.repo.latest_envelope(), None)          # 08:00, a delta
        assert applied is not None and applied.mode == "delta"
        assert merge.running and merge.paused and store.overlay_rows() > 0
        seen = merge.counters().quiet_checks
        assert merge.wait_for(lambda k: k.quiet_checks >= seen + 5, 20)
        assert merge.paused and merge.counters().resumes == 0 and store.overlay_rows() > 0
        env.clock.t = at(22, 30)                               # the depot: the merge runs
        assert merge.wait_for(lambda k: k.finished >= 1, 60)
        store.refresh()
        assert store.overlay_rows() == 0
    finally:
        applier.close()
        store.close()


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_delta_child_is_stopped_only_while_a_tap_is_decided() -> None:
    mono = Taps()
    sched = schedule(FixedClock(at(8)), mono)
    have = PolicyInfo(CHANNEL, 1, "1" * 64, "2036-01-01T00:00:00Z")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], text=True)
    try:
        with sched.watch(child, "delta", have) as stopped:
            assert not stopped() and _state(child.pid) != "T"
            sched.activity()                      # a presentation arrives: the delta waits
            assert stopped()
            wait_until(lambda: _state(child.pid) == "T", 10, "the delta child stopped")
            sched.tap_done()                      # decided and journaled: it goes on
            wait_until(lambda: not stopped() and _state(child.pid) != "T", 10, "continue")
            sched.activity()                      # a tap whose decision never reports back
            assert stopped()
            mono.t += 1.0                         # ... the delta is not held past 250 ms
            wait_until(lambda: not stopped() and _state(child.pid) != "T", 10, "continue")
        assert _state(child.pid) != "T"
    finally:
        child.kill()
        child.wait()


def test_a_loss_report_applies_while_a_snapshot_waits_for_the_busy_hours(
        policy_env: PolicyEnv, broker: Mosquitto) -> None:
    """Issue 15 meets issue 12: the downlink's one worker waits out the busy hours for a
    deferred snapshot, but an online hotlist delta (a card reported lost) wakes it and is
    applied at once, not at the end of the busy hours."""
    from agent.policy.signing import SigningKey
    from sync.hub.hotlist import HotlistChange, publish_change
    from tests.fixtures.policy import PSEUDO

    env = policy_env
    env.clock.t = at(21, 59)
    hot = SigningKey.generate()
    env.repo.rotate([env.key], [env.key.public], hotlist_keys=[hot.public])
    env.build(env.population_sources())
    store = PolicyStore(env.tmp / "T10" / "store.db")
    seed = scheduled_applier(env, store, schedule(FixedClock(at(3))))   # applied at night
    assert seed.offer(env.repo.latest_envelope(), None) is not None
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": "0a" * 16}]), merge=True))
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": "0b" * 16}]), merge=True))
    env.clock.t = at(8, 30)                                   # inside the busy hours
    applier = scheduled_applier(env, store, schedule(env.clock))
    down = Downlink(applier, settings=MqttSettings(host=broker.host, port=broker.port),
                    client_id="T10-policy", retry_min_s=0.05)
    down.start()
    try:
        down.offer(env.repo.latest_envelope())
        wait_until(lambda: down.status()["policy_state"] == "deferred", 20, "deferral")
        sent: list[bytes] = []
        victim = env.pop.tagged("standard")[0]
        publish_change(env.repo.root, HotlistChange("add", victim.card_id), signer=hot,
                       pseudonymizer=PSEUDO, publish=lambda _t, p: sent.append(p),
                       now=env.clock())
        down.offer_online(sent[-1])
        assert down.online.wait_applied(1, timeout=10)        # not after the busy hours
        assert store.hotlisted(PSEUDO.card_key(victim.card_id)) is not None
        # the worker then offers the waiting snapshot again: still deferred, not applied
        # (it is "applying" for a moment first: a race the repeated runs found)
        wait_until(lambda: down.status()["policy_state"] == "deferred", 20, "deferred again")
        assert store.info.version == 1
    finally:
        down.stop()
        applier.close()
        store.close()


def test_a_stopped_snapshot_child_does_not_burst_when_continued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot's row pace is a token bucket: the seconds a child spends stopped for
    taps are no credit for writing faster afterwards (the bench saw a child continued
    in a gap write unpaced, because its pace counted from the start of the part)."""
    from agent.policy import stage
    from agent.policy.parts import write_part

    part = tmp_path / "ent"
    write_part(part, "entitlements", "snapshot",
               ((f"{i:032x}", "elderly", "", "") for i in range(20_000)))
    now = [0.0]                                   # a clock that moves only when slept on

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return now[0]

        @staticmethod
        def sleep(s: float) -> None:
            now[0] += s

    monkeypatch.setattr(stage, "time", FakeTime)
    rows = stage._rows(str(part), "entitlements", "snapshot", "+", None, 10_000)
    for _ in range(5_000):
        next(rows)
    assert 0.35 <= now[0] <= 0.55                 # ~5,000 rows at 10,000 rows/s
    now[0] += 30.0                                # stopped for taps for 30 s
    t = now[0]
    assert sum(1 for _ in rows) == 15_000
    # the other 15,000 rows still take 1.5 s, less at most PACE_CREDIT_S (0.05 s) of
    # saved-up credit and one 1,000-row step
    assert now[0] - t >= 1.5 - 0.05 - 0.1
