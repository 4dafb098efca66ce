"""The daemon follows a policy channel: a published hotlist entry and entitlement change
its decisions while it runs, and a restarted terminal decides by its last bundle."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.model import Reason
from drivers.sim_cards import SimCardSource
from profiles import profile_path
from simulator.broker import Mosquitto
from sync.hub.policy import BundleSources
from sync.link import MqttSettings
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, PSEUDO, PolicyEnv

FARE = 300
"""The standard fare (fen) of the published rules; the stock bus profile charges 200."""


def _dearer_rules(tmp: Path) -> Path:
    """The bus rules with a standard fare of 300 fen (and vectors that expect it)."""
    text = profile_path("bus_validator").read_text(encoding="utf-8")
    assert text.count("standard_fare = 200") == 1
    path = tmp / "bus_validator.toml"
    path.write_text(text.replace("standard_fare = 200", f"standard_fare = {FARE}"),
                    encoding="utf-8")
    return path


def _terminal(env: PolicyEnv, broker: Mosquitto, data: Path) -> tuple[Terminal, SimCardSource,
                                                                     list[Outcome]]:
    cfg = AgentConfig.model_validate({
        "terminal": {"id": "BUS-P1", "data_dir": str(data), "demo": True},
        "location": {"route": "19", "vehicle": "V1"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5},
        "policy": {"enabled": True, "channel": CHANNEL,
                   "anchor_file": str(env.repo.roots_dir / "1.json")},
    })
    terminal = Terminal(cfg, clock=env.clock)
    terminal.pseudonymizer = PSEUDO           # the deployment key the hub hashed with
    cards = SimCardSource(PSEUDO, population=env.pop)
    terminal._sources_override = [cards]
    outcomes: list[Outcome] = []
    terminal.add_listener(outcomes.append)
    terminal.start()
    return terminal, cards, outcomes


def _tap(terminal: Terminal, cards: SimCardSource, outcomes: list[Outcome], holder) -> Outcome:  # type: ignore[no-untyped-def]
    n = len(outcomes)
    cards.tap(holder)
    assert terminal.drain(10)
    return outcomes[n]


def test_running_daemon_applies_published_policy(policy_env: PolicyEnv, broker: Mosquitto,
                                                 tmp_path: Path) -> None:
    env = policy_env
    settings = MqttSettings(host=broker.host, port=broker.port)
    terminal, cards, outcomes = _terminal(env, broker, tmp_path / "t")
    try:
        sources = env.population_sources()
        sources.rules = [_dearer_rules(tmp_path)]
        env.build(sources)
        env.repo.publish(settings)
        wait_until(lambda: terminal.store is not None and terminal.store.info.version == 1, 30,
                 "policy v1 to be applied")
        victim, newcomer, rider = env.pop.tagged("standard")[:3]
        first = _tap(terminal, cards, outcomes, victim).decision
        assert first.product == "standard" and first.amount_cents == FARE
        env.build(BundleSources(
            hotlist=env.source("hot", [{"card_id": victim.card_id, "reason": "lost"}]),
            entitlements=env.source("ent", [{"ssn": newcomer.ssn, "name": "disabled"}]),
            merge=True))
        env.repo.publish(settings)
        wait_until(lambda: terminal.store is not None and terminal.store.info.version == 2, 30,
                 "policy v2 to be applied")
        compactor = terminal.applier.compactor
        yields: list[int] = []
        activity = compactor.activity

        def counting_activity() -> None:
            yields.append(len(outcomes))
            activity()
        compactor.activity = counting_activity  # type: ignore[method-assign]
        env.clock.t += 120
        out = _tap(terminal, cards, outcomes, victim)
        assert out.decision.reason is Reason.HOTLISTED
        assert out.record is not None and out.record.body["policy"] == f"{CHANNEL}@2"
        assert _tap(terminal, cards, outcomes, newcomer).decision.product == "disabled_free"
        n = len(outcomes)
        assert terminal.status()["policy_state"] == "applied"
        # each presentation told the background merge to yield, before it was decided
        assert yields == [n - 2, n - 1]
    finally:
        terminal.stop()
    # restarted: still decides by v2 -- its data and its rules -- before any broker traffic
    broker.stop()
    terminal, cards, outcomes = _terminal(env, broker, tmp_path / "t")
    try:
        assert terminal.store is not None and terminal.store.info.version == 2
        env.clock.t += 120
        assert _tap(terminal, cards, outcomes, victim).decision.reason is Reason.HOTLISTED
        fare = _tap(terminal, cards, outcomes, rider).decision
        assert fare.product == "standard" and fare.amount_cents == FARE   # the stock is 200
    finally:
        terminal.stop()
