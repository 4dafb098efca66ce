"""Policy bundles applied to a terminal's store: snapshot, deltas, rules, the engine's view."""

from __future__ import annotations

import json
import threading
from datetime import date

import pytest

from agent.codes.trust import TrustStore
from agent.engine import Outcome
from agent.model import Reason
from agent.policy.apply import AppliedPolicy, InProcessRunner, PolicyApplier, SubprocessRunner
from agent.policy.errors import ApplyFailed, Refusal
from agent.policy.stage import ApplyPlan
from agent.policy.wiring import engine_listener
from agent.store import PolicyInfo, PolicyStore
from profiles import profile_path
from sync.hub.policy import BundleSources
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, PSEUDO, PolicyEnv


def test_snapshot_then_hotlist_delta_change_decisions(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = env.terminal()
    first = env.build(env.population_sources())
    assert first.version == 1
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "snapshot"
    assert t.store.info.label == "city/370302/bus@1"
    assert applied.ruleset("bus_validator") is not None
    victim = env.pop.tagged("standard")[0]
    assert t.tap(victim).decision.accepted
    # report the card lost: a small delta, inline in the envelope
    res = env.build(BundleSources(hotlist=env.source("hot", [{"card_id": victim.card_id}]),
                                  merge=True))
    delta = {p.name: p for p in res.parts}["hotlist.delta"]
    assert delta.inline and delta.rows == 1
    env.clock.t += 120
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "delta"
    out = t.tap(victim)
    assert out.decision.reason is Reason.HOTLISTED
    assert out.record is not None and out.record.body["policy"] == "city/370302/bus@2"
    # the same envelope again is a no-op
    assert t.applier.offer(env.repo.latest_envelope(), None) is None


def test_entitlement_delta_and_removal(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = env.terminal(runner=SubprocessRunner())
    env.build(env.population_sources())
    t.applier.offer(env.repo.latest_envelope(), None)
    std = env.pop.tagged("standard")[0]
    assert t.tap(std).decision.product == "standard"
    student = env.pop.tagged("student")[0]
    ents = [{"ssn": h.ssn, "name": c} for h in env.pop for c in h.categories
            if h is not student] + [{"ssn": std.ssn, "name": "disabled"}]
    env.build(BundleSources(entitlements=env.source("ent", ents)))
    env.clock.t += 3600
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "delta"
    assert t.tap(std).decision.product == "disabled_free"
    assert t.tap(student).decision.product == "standard"
    assert "disabled" in t.store.entitlements(PSEUDO.holder_key(std.ssn), date(2026, 11, 25))
    # the delta sits in the overlay until the background merge has moved it
    wait_until(lambda: not t.applier.compactor.running, 30, "the overlay merge")
    assert t.applier.compactor.merged == 2 and t.store.overlay_rows() == 0
    env.clock.t += 120                                   # past the passback window
    assert t.tap(std).decision.product == "disabled_free"
    assert t.tap(student).decision.product == "standard"


def test_terminal_behind_takes_the_snapshot(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = env.terminal()
    env.build(env.population_sources())
    victim = env.pop.tagged("standard")[1]
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": victim.card_id}]),
                            merge=True))
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": env.pop.tagged(
        "standard")[2].card_id}]), merge=True))
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "snapshot"
    assert t.store.info.version == 3
    assert t.tap(victim).decision.reason is Reason.HOTLISTED
    assert t.store.counts()["hotlist"] == 3
    assert t.store.integrity_problems() == []


def test_no_raw_identifiers_in_repo_parts_or_store(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = env.terminal()
    env.build(env.population_sources())
    t.applier.offer(env.repo.latest_envelope(), None)
    blobs = [p.read_bytes() for p in env.repo.root.rglob("*") if p.is_file()]
    blobs += [p.read_bytes() for p in t.store.path.parent.iterdir() if p.is_file()]
    import gzip
    for p in env.repo.parts_dir.iterdir():
        try:
            blobs.append(gzip.decompress(p.read_bytes()))
        except OSError:
            pass
    for h in env.pop:
        for raw in (h.ssn, h.card_id, h.name):
            assert not any(raw.encode() in b for b in blobs), raw


def test_rules_and_issuer_keys_reach_the_engine_and_survive_restart(policy_env: PolicyEnv
                                                                   ) -> None:
    env = policy_env
    from agent.codes.algorithms import algorithm
    es = algorithm("ES256")
    pem = es.public_pem(es.public_key(es.generate())).decode()
    issuers = env.tmp / "issuers.json"
    issuers.write_text(json.dumps({"version": "2026-11", "issuers": [
        {"kid": "jn-2026a", "alg": "ES256", "iss": "370100", "public_key": pem}]}))
    strict = profile_path("bus_validator").read_text(encoding="utf-8").replace(
        'stale_policy = "keep_deciding"', 'stale_policy = "deny_all"')
    rules = env.tmp / "bus_validator.toml"
    rules.write_text(strict, encoding="utf-8")
    sources = env.population_sources()
    sources.rules, sources.issuers = [rules], issuers
    env.build(sources)
    t = env.terminal()
    trust = TrustStore(version="local")
    t.applier.add_listener(engine_listener(t.engine, "bus_validator", trust))
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None
    assert t.engine.ruleset.profile.stale_policy == "deny_all"
    assert t.engine.ruleset is applied.ruleset("bus_validator")   # checked once, then used
    assert trust.version == "2026-11" and len(trust) == 1
    key = trust.get(b"jn-2026a")
    assert key is not None and key.iss == "370100"
    # a restarted terminal gets the same rules and keys from its store
    again = PolicyStore(t.store.path)
    try:
        applier = PolicyApplier(again, channel=CHANNEL, anchor=env.anchor)
        current = applier.current()
        assert current.info == t.store.info
        rs = current.ruleset("bus_validator")
        assert rs is not None and rs.profile.stale_policy == "deny_all"
        keys = current.issuer_keys()
        assert keys is not None and keys[0][0].kid == "jn-2026a"
        assert applier.trusted_root().serial == 1
    finally:
        again.close()


def test_a_held_reader_sees_a_committed_delta_only_at_refresh(tmp_path) -> None:  # type: ignore[no-untyped-def]
    reader = PolicyStore(tmp_path / "store.db")
    writer = PolicyStore(tmp_path / "store.db")     # as the apply process does
    try:
        reader.hold()                                   # as the applier does
        writer.apply(hotlist=[("k1", "card", "lost", "2026-11-25")],
                     info=PolicyInfo("c/1", 2, "h2"))
        # rows and identity both still the old snapshot: no mix while the terminal runs
        assert reader.hotlisted("k1") is None and reader.info.version == 0
        assert reader.refresh()
        assert reader.hotlisted("k1") == "lost" and reader.info == PolicyInfo("c/1", 2, "h2")
        assert not reader.refresh()
    finally:
        reader.close()
        writer.close()


def test_policy_switches_between_taps_never_inside_one(policy_env: PolicyEnv) -> None:
    """A tap arriving while the new bundle is being switched in waits, then is decided
    with the new data and journals the new label: never the new data under the old
    label or rules."""
    env = policy_env
    t = env.terminal()
    env.build(env.population_sources())
    t.applier.offer(env.repo.latest_envelope(), None)
    victim = env.pop.tagged("standard")[0]
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": victim.card_id}]),
                            merge=True))
    env.clock.t += 120
    result: list[Outcome] = []
    racer = threading.Thread(target=lambda: result.append(t.tap(victim)))
    waited: list[bool] = []

    def meanwhile(applied: AppliedPolicy) -> None:   # listeners run where rules are swapped
        racer.start()                 # the tap arrives in the middle of the switch
        racer.join(0.3)
        waited.append(racer.is_alive())

    t.applier.add_listener(meanwhile)
    assert t.applier.offer(env.repo.latest_envelope(), None) is not None
    racer.join(10)
    assert waited == [True], "a tap was decided in the middle of a policy switch"
    (out,) = result
    assert out.decision.reason is Reason.HOTLISTED
    assert out.record is not None and out.record.body["policy"] == f"{CHANNEL}@2"


def test_an_apply_that_lands_but_reports_failure_is_switched_to(policy_env: PolicyEnv) -> None:
    """A child killed after its commit: the store holds the new version, so the terminal
    switches to it (rules and all) instead of deciding by new data under old rules."""
    class LandsThenFails(InProcessRunner):
        def run(self, plan: ApplyPlan) -> None:
            super().run(plan)
            raise ApplyFailed(Refusal.APPLY_FAILED, "killed after the commit")

    env = policy_env
    t = env.terminal(runner=LandsThenFails())
    seen: list[int] = []
    t.applier.add_listener(lambda a: seen.append(a.info.version))
    env.build(env.population_sources())
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and t.store.info.version == 1 and seen == [1]


def test_a_snapshot_never_starts_without_room_for_it_and_the_journal_reserve(
        policy_env: PolicyEnv) -> None:
    env = policy_env
    t = env.terminal()
    free = [0]
    t.applier.keep_free_bytes = 16 << 20                 # the journal's reserve, twice
    t.applier._free_bytes = lambda path: free[0]
    built = env.build(env.population_sources())
    parts = sum(p.size for p in built.parts if p.kind in ("entitlements", "hotlist"))
    need = max(t.store.active_path.stat().st_size, 4 * parts) + (16 << 20)
    free[0] = need - 1                                   # one byte short
    with pytest.raises(ApplyFailed, match="not enough disk space for a snapshot"):
        t.applier.offer(env.repo.latest_envelope(), None)
    assert t.store.info.version == 0, "nothing was applied"
    free[0] += 1
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "snapshot"
