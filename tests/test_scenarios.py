"""Per-profile scenarios through the full path: presentation → decision → journal →
peripherals, with the host-built gate controller on a real pty and the prompt history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.model import Reason
from agent.store import PolicyStore
from drivers.prompt import BEEP_PATTERNS, SimPrompter
from drivers.sim_cards import SimCardSource
from simulator.demo import seed_store
from simulator.population import CardHolder
from tests.fixtures.hub import wait_until

TZ = ZoneInfo("Asia/Shanghai")



class Rig:
    """A terminal of one profile with sim cards, a recording prompter and (gates) SimGate."""

    def __init__(self, tmp_path: Path, profile: str, *, gate: bool, open_ms: int = 1500,
                 hour: int = 10) -> None:
        cfg: dict[str, Any] = {
            "terminal": {"id": "T-" + profile.replace("_", "-"), "profile": profile,
                         "data_dir": str(tmp_path / "data"), "demo": True},
            "location": {"site": "x", "gate": "G1", "direction": "in"},
            "mqtt": {"enabled": False},
        }
        if gate:
            cfg["gate"] = {"enabled": True, "backend": "sim",
                           "options": {"direction": "in", "open_ms": open_ms}}
        self.now = [datetime(2026, 11, 25, hour, 0, tzinfo=TZ).timestamp()]
        self.prompter = SimPrompter()
        self.terminal = Terminal(AgentConfig.model_validate(cfg), actuators=[self.prompter],
                                 clock=lambda: self.now[0])
        self.cards = SimCardSource(self.terminal.pseudonymizer, population_size=40)
        self.terminal._sources_override = [self.cards]
        store = PolicyStore(self.terminal.cfg.store_path)
        seed_store(store, self.cards.population, self.terminal.pseudonymizer)
        store.close()
        self.outcomes: list[Outcome] = []
        self.terminal.add_listener(self.outcomes.append)
        self.terminal.start()

    @property
    def controller(self) -> Any:
        return self.terminal.gates[0].gate.controller

    def tap(self, h: CardHolder, service: str = "") -> Outcome:
        n = len(self.outcomes)
        self.now[0] += 20
        self.cards.tap(h, service=service)
        wait_until(lambda: len(self.outcomes) > n, 10, "the decision")
        return self.outcomes[n]

    def events(self, name: str) -> list[dict[str, Any]]:
        j = self.terminal.journal
        assert j is not None
        return [r.body for r in j.records(0, 10_000) if r.body.get("event") == name]

    def close(self) -> None:
        self.terminal.stop()


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    profile, gate = request.param
    r = Rig(tmp_path, profile, gate=gate)
    try:
        yield r
    finally:
        r.close()


def _holder(rig: Rig, tag: str, *, no_categories: bool = False) -> CardHolder:
    return next(h for h in rig.cards.population if tag in h.tags
                and (not no_categories or not h.categories))


@pytest.mark.parametrize("rig", [("bus_validator", False)], indirect=True)
def test_bus_elderly_free_ride_beeps_concession_and_says_elderly(rig: Rig) -> None:
    out = rig.tap(_holder(rig, "elderly"))
    assert out.decision.product == "elderly_free" and out.record is not None
    ev = rig.prompter.history[-1]
    assert ev.text == "老年卡 免费" and ev.voice == "elderly"
    assert ev.pattern == BEEP_PATTERNS["ok_concession"]
    hot = rig.tap(_holder(rig, "hotlisted"))
    assert hot.decision.reason is Reason.HOTLISTED
    assert rig.prompter.history[-1].text == "已挂失 请到窗口"
    assert rig.prompter.history[-1].pattern == BEEP_PATTERNS["deny"]


def test_scenic_gate_opens_and_closes_on_passage(tmp_path: Path) -> None:
    # an open time no test waits out: a close can only come from the passage
    # (the journal-before-open order itself is tests/test_ordering.py's)
    rig = Rig(tmp_path, "scenic_gate", gate=True, open_ms=60_000)
    try:
        h = _holder(rig, "elderly", no_categories=True)
        out = rig.tap(h)
        assert out.decision.accepted and out.record is not None
        assert rig.controller.wait_barrier("open_in", 5), "the gate did not open"
        rig.controller.pass_through("in")
        assert rig.controller.wait_barrier("closed", 5), "the gate did not close after passage"
        assert rig.events("not_entered") == []
        # the passage itself is journaled: visitor counts count people who went through
        wait_until(lambda: bool(rig.events("passed")), 5, "the passed record")
        assert rig.events("passed")[0]["ref_seq"] == out.record.seq
        again = rig.tap(h)
        assert again.decision.reason is Reason.PASSBACK, "one entry per holder per day"
    finally:
        rig.close()


@pytest.mark.parametrize("rig", [("scenic_gate", True)], indirect=True)
def test_scenic_timeout_without_passage_is_not_entered_and_keeps_the_entry(rig: Rig) -> None:
    h = _holder(rig, "disabled")
    first = rig.tap(h)
    assert first.decision.accepted and first.record is not None
    assert rig.controller.wait_barrier("open_in", 5)
    assert rig.controller.wait_barrier("closed", 5), "the gate did not close on its timeout"
    wait_until(lambda: bool(rig.events("not_entered")), 5, "the not-entered record")
    ne = rig.events("not_entered")[0]
    assert ne["ref_seq"] == first.record.seq
    again = rig.tap(h)
    assert again.decision.accepted, "a visitor who did not pass keeps the day's entry"


@pytest.mark.parametrize("rig", [("scenic_gate", True)], indirect=True)
def test_scenic_gate_out_of_service_denies_without_taking_the_entry(rig: Rig) -> None:
    rig.controller.mute(True)
    gate = rig.terminal.gates[0]
    wait_until(lambda: not gate.available, 10, "the gate to be reported out of service")
    h = _holder(rig, "youfu")
    out = rig.tap(h)
    assert out.decision.reason is Reason.GATE_OUT_OF_SERVICE and not out.decision.accepted
    assert rig.prompter.history[-1].text == "闸机故障 走人工通道"
    assert rig.controller.barrier == "closed"
    wait_until(lambda: bool(rig.events("gate_out_of_service")), 5, "the fault to be journaled")
    rig.controller.mute(False)
    wait_until(lambda: gate.available, 10, "the gate to come back")
    assert rig.tap(h).decision.accepted, "the denied tap consumed nothing"


@pytest.mark.parametrize("rig", [("scenic_gate", True)], indirect=True)
def test_fire_alarm_opens_the_gate_and_is_journaled(rig: Rig) -> None:
    rig.controller.fire_alarm(True)
    assert rig.controller.wait_barrier("open_both", 5), "fire alarm must open all ways"
    wait_until(lambda: bool(rig.events("alarm")), 5, "the alarm record")
    assert rig.events("alarm")[0]["alarm"] == "fire"
    rig.controller.fire_alarm(False)
    gate = rig.terminal.gates[0]
    wait_until(lambda: gate.available, 10, "the gates to leave the emergency after the alarm")
    assert rig.controller.wait_barrier("closed", 5)
    assert rig.tap(_holder(rig, "disabled")).decision.accepted
    j = rig.terminal.journal
    assert j is not None and j.verify() == []


@pytest.mark.parametrize("rig", [("museum_gate", True)], indirect=True)
def test_museum_gate_opens_for_identity_and_counts_visitors(rig: Rig) -> None:
    from agent.cli.agent import journal_stats

    for h in rig.cards.population.holders[:3]:
        if h.hotlisted or "expired" in h.tags:
            continue
        out = rig.tap(h)
        assert out.decision.accepted and out.decision.product == "free_entry"
        assert rig.controller.wait_barrier("open_in", 5)
        rig.controller.pass_through("in")
        assert rig.controller.wait_barrier("closed", 5)
    j = rig.terminal.journal
    assert j is not None
    assert sum(journal_stats(j, "hour").values()) == 3
    assert rig.prompter.history[-1].text == "欢迎参观"


@pytest.mark.parametrize("rig", [("service_kiosk", False)], indirect=True)
def test_kiosk_shows_and_announces_the_queue_number(rig: Rig) -> None:
    a = rig.tap(rig.cards.population.holders[0], service="A")
    b = rig.tap(rig.cards.population.holders[1], service="A")
    assert a.record is not None and b.record is not None
    assert (a.record.body["queue_no"], b.record.body["queue_no"]) == ("A001", "A002")
    assert rig.prompter.history[-1].text == "社保卡业务 A002号"
    assert rig.prompter.history[-1].voice == "number:A002"
