"""One source of truth: a bundle's settings part changes a fare in the charged amount and
the prompt together, on a running terminal; settings that break the rules are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.broker import Mosquitto
from sync.hub.policy import SourceError
from tests.fixtures.policy import PolicyEnv
from tests.policy_daemon import PolicyDaemon, publish_envelope


def _settings(env: PolicyEnv, doc: object) -> Path:
    env._n += 1
    path = env.tmp / f"settings-{env._n}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_changing_standard_fare_in_a_bundle_changes_amount_and_prompt(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path) -> None:
    env = policy_env
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    riders = iter(env.pop.tagged("standard"))
    try:
        def fare_now() -> tuple[int, str]:
            d = daemon.tap(next(riders)).decision
            assert d.accepted and d.product == "standard", d
            return d.amount_cents, d.prompt.text

        # v1: no rules part — the terminal's own profile, compiled with the bundle's fare
        sources = env.population_sources()
        sources.rules = []
        sources.settings = _settings(env, {"bus_validator": {"standard_fare": 250}})
        env.build(sources)
        publish_envelope(broker, env.repo.latest_envelope())
        daemon.wait_version(1)
        assert fare_now() == (250, "普通卡 2.50元")

        # v2: the bundle carries the rules too; its settings still decide the fare
        sources = env.population_sources()
        sources.settings = _settings(env, {"bus_validator": {"standard_fare": 300}})
        env.build(sources)
        publish_envelope(broker, env.repo.latest_envelope())
        daemon.wait_version(2)
        assert fare_now() == (300, "普通卡 3.00元")

        # v3: a fare that is no number, v4: a setting the profile does not have — refused
        # at the hub's build (the terminal's own check), and by the terminal should such a
        # bundle be signed anyway (a hub without the check); the fare in force stays
        for doc in ({"bus_validator": {"standard_fare": "cheap"}},
                    {"bus_validator": {"standard_fare_cents": 100}}):
            sources = env.population_sources()
            sources.settings = _settings(env, doc)
            with pytest.raises(SourceError, match="terminals would refuse this bundle"):
                env.build(sources)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("sync.hub.policy.check_bundle_parts", lambda *a: None)
                env.build(sources)
            publish_envelope(broker, env.repo.latest_envelope())
            daemon.wait_state("refused", "vectors_failed")
            assert fare_now() == (300, "普通卡 3.00元")

        # v5: back to the profile's own fare (an empty override)
        sources = env.population_sources()
        sources.settings = _settings(env, {"bus_validator": {}})
        env.build(sources)
        publish_envelope(broker, env.repo.latest_envelope())
        daemon.wait_version(5)
        assert fare_now() == (200, "普通卡 2.00元")
    finally:
        daemon.stop()
