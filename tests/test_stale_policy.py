"""``stale_policy = "deny_all"`` under taps (docs/policy.md, threat model "freeze";
docs/rules.md): once the applied bundle expires, a running terminal denies every tap as
``policy_stale``, journaled with ``policy_stale: true``; a fresh bundle makes it accept
again. The ``keep_deciding`` side is in ``tests/test_policy_attacks.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.journal import parse_utc
from agent.model import Reason
from profiles import profile_path
from simulator.broker import Mosquitto
from sync.hub.policy import BundleSources
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, PolicyEnv
from tests.policy_daemon import PolicyDaemon, publish_envelope


def _deny_all_rules(tmp: Path) -> Path:
    """The stock bus rules with ``stale_policy = "deny_all"``."""
    text = profile_path("bus_validator").read_text(encoding="utf-8")
    assert 'stale_policy = "keep_deciding"' in text
    path = tmp / "bus_validator.toml"
    path.write_text(text.replace('stale_policy = "keep_deciding"', 'stale_policy = "deny_all"'),
                    encoding="utf-8")
    return path


def _expires(envelope: bytes) -> float:
    return parse_utc(json.loads(envelope)["manifest"]["signed"]["expires"])


def test_deny_all_denies_every_tap_once_the_policy_expires(policy_env: PolicyEnv,
                                                          broker: Mosquitto,
                                                          tmp_path: Path) -> None:
    env = policy_env
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        sources = env.population_sources()
        sources.rules = [_deny_all_rules(tmp_path)]
        env.build(sources)
        v1 = env.repo.latest_envelope()
        publish_envelope(broker, v1)
        daemon.wait_version(1)
        # the store moves to v1 inside the switch, before the listeners swap the engine's
        # rules; the downlink reports "applied" only once they have
        daemon.wait_state("applied")
        engine = daemon.terminal.engine
        assert engine is not None
        with engine.between_taps():     # the store and the rules switch together in here
            assert engine.ruleset.profile.stale_policy == "deny_all"
        standard = env.pop.tagged("standard")
        elderly = env.pop.tagged("elderly")[0]
        hotlisted = env.pop.tagged("hotlisted")[0]

        fresh = daemon.tap(standard[0])                      # within the bundle's validity
        assert fresh.decision.accepted and fresh.decision.product == "standard"
        assert fresh.record is not None
        assert "policy_stale" not in daemon.journaled(fresh.record.seq)

        env.clock.t = _expires(v1) + 60                      # nothing new came for a week
        for holder, would_be in ((standard[1], Reason.ACCEPTED), (elderly, Reason.ACCEPTED),
                                 (hotlisted, Reason.HOTLISTED)):
            out = daemon.tap(holder)
            assert not out.decision.accepted, (holder.tags, would_be)
            assert out.decision.reason is Reason.POLICY_STALE
            assert out.decision.rule_id == "pre:stale-policy"
            assert out.record is not None
            body = daemon.journaled(out.record.seq)           # on disk, as the hub gets it
            assert body["accepted"] is False and body["reason"] == "policy_stale"
            assert body["policy_stale"] is True and body["policy"] == f"{CHANNEL}@1"
            assert body["amount"] == 0                        # no fare taken
        assert daemon.status()["policy"] == f"{CHANNEL}@1"

        # a fresh bundle (built now, so it expires a week from now) ends the denial
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": standard[3].card_id}]),
                                merge=True))
        publish_envelope(broker, env.repo.latest_envelope())
        daemon.wait_version(2)
        again = daemon.tap(standard[2])
        assert again.decision.accepted and again.decision.product == "standard"
        assert again.record is not None
        body = daemon.journaled(again.record.seq)
        assert body["accepted"] is True and "policy_stale" not in body
        assert body["policy"] == f"{CHANNEL}@2"
        assert daemon.tap(standard[3]).decision.reason is Reason.HOTLISTED   # v2's data too
    finally:
        daemon.stop()


def test_the_daemon_judges_a_manifest_expiry_by_its_own_clock(policy_env: PolicyEnv,
                                                             broker: Mosquitto,
                                                             tmp_path: Path) -> None:
    """Applier and engine share the terminal's clock: a bundle that has expired by it is
    refused as ``expired`` (freeze), though the wall clock would still take it."""
    env = policy_env
    wall = time.time()
    env.build(env.population_sources(), now=wall)            # expires a week after wall time
    env.clock.t = wall + 30 * 86400                          # the terminal's clock: a month on
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        publish_envelope(broker, env.repo.latest_envelope())
        wait_until(lambda: daemon.status()["policy_state"] in ("applied", "refused"), 30,
                   "the bundle to be handled")
        status = daemon.status()
        assert (status["policy_state"], status["policy_refusal"]) == ("refused", "expired")
        assert daemon.terminal.store is not None and daemon.terminal.store.info.version == 0
    finally:
        daemon.stop()
