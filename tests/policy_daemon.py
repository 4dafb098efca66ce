"""A running terminal daemon (:class:`agent.daemon.Terminal`, sim card source) that follows
a policy channel of a :class:`~tests.fixtures.policy.PolicyEnv` over a real broker, for
tests that drive policy behaviour end to end: taps decided by the worker thread, envelopes
published retained on the channel's manifest topic, the journal read back from its file
through a second connection."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.engine import Outcome
from drivers.sim_cards import SimCardSource
from simulator.broker import Mosquitto
from simulator.population import CardHolder
from sync.link import Link, MqttSettings
from sync.topics import policy_manifest
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, PSEUDO, PolicyEnv

__all__ = ["PolicyDaemon", "publish_envelope"]


def publish_envelope(broker: Mosquitto, payload: bytes, timeout_s: float = 10.0) -> None:
    """Publish ``payload`` retained (QoS 1) on the channel's manifest topic, as the hub or
    an attacker holding the broker would; returns once the broker acknowledged it."""
    link = Link(MqttSettings(host=broker.host, port=broker.port), "test-policy-publisher")
    link.start()
    try:
        assert link.wait_connected(timeout_s), "broker not reachable"
        info = link.publish(policy_manifest(CHANNEL), payload, qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        assert info.is_published(), "manifest publish not acknowledged"
    finally:
        link.stop()


class PolicyDaemon:
    """One started :class:`Terminal` (id ``BUS-P1``) with data in ``data``; its clock is
    the env's settable clock, its anchor the env's root #1."""

    def __init__(self, env: PolicyEnv, broker: Mosquitto, data: Path) -> None:
        cfg = AgentConfig.model_validate({
            "terminal": {"id": "BUS-P1", "data_dir": str(data), "demo": True},
            "location": {"route": "19", "vehicle": "V1"},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                     "reconnect_max_s": 0.5},
            "policy": {"enabled": True, "channel": CHANNEL,
                       "anchor_file": str(env.repo.roots_dir / "1.json")},
        })
        self.env = env
        self.journal_path = cfg.journal_path
        self.terminal = Terminal(cfg, clock=env.clock)
        self.terminal.pseudonymizer = PSEUDO       # the deployment key the hub hashed with
        self.cards = SimCardSource(PSEUDO, population=env.pop)
        self.terminal._sources_override = [self.cards]
        self.outcomes: list[Outcome] = []
        self.terminal.add_listener(self.outcomes.append)
        self.terminal.start()

    @property
    def applier(self) -> Any:
        assert self.terminal.applier is not None
        return self.terminal.applier

    def status(self) -> dict[str, Any]:
        return self.terminal.status()

    def tap(self, holder: CardHolder) -> Outcome:
        """Tap ``holder``'s card and return the outcome the worker decided for it."""
        n = len(self.outcomes)
        self.cards.tap(holder)
        assert self.terminal.drain(10), "the tap was not decided"
        assert len(self.outcomes) == n + 1, "one tap, one outcome"
        return self.outcomes[n]

    def wait_version(self, version: int, timeout: float = 30.0) -> None:
        """Wait until policy ``version`` of the channel is applied."""
        store = self.terminal.store
        assert store is not None
        wait_until(lambda: store.info.version == version, timeout,
                   f"policy v{version} to be applied")

    def wait_state(self, state: str, refusal: str = "", timeout: float = 30.0) -> None:
        """Wait until the downlink reports ``state`` (``applied``, ``refused``, …) with
        last refusal ``refusal``, i.e. until it has handled the last envelope sent."""
        def reached() -> bool:
            s = self.status()
            return (s["policy_state"], s["policy_refusal"]) == (state, refusal)
        wait_until(reached, timeout, f"policy state {state} {refusal}".strip())

    def journaled(self, seq: int) -> dict[str, Any]:
        """Record ``seq`` as it is on disk, read through a connection of its own."""
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
        finally:
            db.close()
        assert row is not None, f"record {seq} is not in the journal file"
        body: dict[str, Any] = json.loads(row[0])
        return body

    def stop(self) -> None:
        self.terminal.stop()
