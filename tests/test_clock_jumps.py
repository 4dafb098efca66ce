"""The wall clock jumps (RTC battery, bad NTP, a technician's ``date -s``) in the middle of
a run: no rider charged twice within the passback window, no daily limit exceeded, no
journal hole, each jump journaled as ``clock_jump``. The terminal runs with an injected
wall clock and an injected monotonic clock that keeps counting as real time would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.codes import CodeVerifier, TrustStore
from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.engine import Engine, Outcome
from agent.journal import Journal
from agent.model import ClockQuality, Presentation, PresentationKind, Reason
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from agent.store import PolicyStore
from agent.timebase import TimeBase
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource
from profiles import profile_path
from simulator.broker import Mosquitto
from simulator.demo import seed_store
from simulator.phone import Phone, SimIssuer
from simulator.population import CardHolder
from tests.fixtures.hub import HubProcess, wait_until

TZ = ZoneInfo("Asia/Shanghai")
HOUR, DAY = 3600.0, 86400.0
START = datetime(2026, 11, 25, 10, 0, tzinfo=TZ).timestamp()


class Clocks:
    """Real time (``mono``) and what the wall clock says (``mono`` + ``skew``)."""

    def __init__(self) -> None:
        self.mono_s = 1000.0
        self.skew = START - self.mono_s
        self.quality = ClockQuality.SYNCED

    def wall(self) -> float:
        return self.mono_s + self.skew

    def mono(self) -> float:
        return self.mono_s

    def wait(self, seconds: float) -> None:
        self.mono_s += seconds

    def jump(self, seconds: float) -> None:
        self.skew += seconds


class Bus:
    def __init__(self, data: Path, clocks: Clocks, cards: SimCardSource | None = None,
                 mqtt: dict[str, Any] | None = None) -> None:
        cfg: dict[str, Any] = {
            "terminal": {"id": "BUS-CLK", "data_dir": str(data), "demo": True},
            "location": {"route": "19", "vehicle": "V1"},
            "mqtt": mqtt or {"enabled": False},
        }
        self.terminal = Terminal(AgentConfig.model_validate(cfg), actuators=[SimPrompter()],
                                 clock=clocks.wall, mono=clocks.mono,
                                 clock_quality=lambda: clocks.quality)
        self.cards = cards or SimCardSource(self.terminal.pseudonymizer, population_size=40)
        self.terminal._sources_override = [self.cards]
        if cards is None:
            store = PolicyStore(self.terminal.cfg.store_path)
            seed_store(store, self.cards.population, self.terminal.pseudonymizer)
            store.close()
        self.outcomes: list[Outcome] = []
        self.terminal.add_listener(self.outcomes.append)
        self.terminal.start()

    def tap(self, h: CardHolder) -> Outcome:
        n = len(self.outcomes)
        self.cards.tap(h)
        wait_until(lambda: len(self.outcomes) > n, 10, "the decision")
        return self.outcomes[n]

    def journal(self) -> Journal:
        assert self.terminal.journal is not None
        return self.terminal.journal

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r.body for r in self.journal().records(0, 10_000)
                if r.body.get("event") == name]

    def close(self) -> None:
        self.terminal.stop()


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def bus(tmp_path: Path, clocks: Clocks) -> Iterator[Bus]:
    b = Bus(tmp_path / "data", clocks)
    try:
        yield b
    finally:
        b.close()


def _standard(bus: Bus) -> CardHolder:
    return next(h for h in bus.cards.population.tagged("standard") if not h.categories
                and h.region.startswith("37"))     # a Shandong card: the standard fare


def _elderly(bus: Bus) -> CardHolder:
    return next(h for h in bus.cards.population if "elderly" in h.tags and not h.hotlisted
                and h.region.startswith("37"))


def test_clock_set_back_an_hour_is_no_second_fare(bus: Bus, clocks: Clocks) -> None:
    rider = _standard(bus)
    assert bus.tap(rider).decision.product == "standard"
    clocks.wait(10)
    clocks.jump(-HOUR)
    second = bus.tap(rider)
    assert second.decision.product == "repeat" and second.decision.amount_cents == 0
    clocks.wait(10)
    assert bus.tap(rider).decision.product == "repeat"
    jumps = bus.events("clock_jump")
    assert len(jumps) == 1, "one event per jump, not one per tap"
    assert jumps[0]["direction"] == "back" and not jumps[0]["followed"]
    assert abs(jumps[0]["step_ms"] / 1000 + HOUR) < 60
    assert abs(jumps[0]["offset_ms"] / 1000 + HOUR) < 60
    # real time goes on: past the window the rider pays again, once
    clocks.wait(120)
    assert bus.tap(rider).decision.product == "standard"
    charged = [o for o in bus.outcomes if o.decision.product == "standard"]
    assert len(charged) == 2
    assert bus.terminal.status()["clock_offset_s"] == pytest.approx(-HOUR, abs=60)
    assert "clock_jump" in bus.terminal.status()["alarms"]


@pytest.mark.parametrize("jumps", [(-DAY, +DAY), (+DAY, -DAY), (-DAY, +2 * DAY)])
def test_daily_free_rides_survive_day_jumps(bus: Bus, clocks: Clocks,
                                            jumps: tuple[float, ...]) -> None:
    rider = _elderly(bus)
    free = 0
    for jump in (0.0, *jumps):
        clocks.jump(jump)
        for _ in range(6):
            clocks.wait(300)              # five minutes apart: never a passback repeat
            if bus.tap(rider).decision.product == "elderly_free":
                free += 1
    assert free == 4, "the daily limit of the elderly free ride was exceeded"
    assert bus.journal().verify() == []
    assert len(bus.events("clock_jump")) == len(jumps)


def test_a_ten_day_jump_prunes_no_counters_and_leaves_no_hole(bus: Bus, clocks: Clocks
                                                             ) -> None:
    rider = _elderly(bus)
    for _ in range(3):
        clocks.wait(300)
        assert bus.tap(rider).decision.product == "elderly_free"
    j = bus.journal()
    j.mark_acked(j.last_seq - 1)
    clocks.jump(+10 * DAY)
    assert j.prune(7 * DAY) == 0, "records of today pruned by a clock ten days ahead"
    clocks.wait(300)
    assert bus.tap(rider).decision.product == "elderly_free"   # the 4th of today
    clocks.wait(300)
    assert bus.tap(rider).decision.product == "standard"
    assert j.verify() == []


def test_prune_deletes_only_a_prefix_even_with_back_dated_records(tmp_path: Path) -> None:
    now = [START]
    j = Journal(tmp_path / "j.db", "T", clock=lambda: now[0])
    for i in range(10):
        # records 4-6 were stamped by a clock that was set back 30 days
        j.append({"event": "tap"}, at=START - 30 * DAY if 4 <= i + 1 <= 6 else START + i)
    j.mark_acked(10)
    now[0] = START + 8 * DAY
    assert j.prune(7 * DAY) == 9               # all but the newest: every one is old
    j2 = Journal(tmp_path / "k.db", "T", clock=lambda: now[0])
    for i in range(10):
        j2.append({"event": "tap"}, at=START - 30 * DAY if 4 <= i + 1 <= 6 else START + i)
    j2.mark_acked(10)
    now[0] = START + 1
    assert j2.prune(0.5) == 1                  # seq 1 only: 2 is not older than the cutoff
    assert [r.seq for r in j2.records(0, 100)] == list(range(2, 11))
    assert j2.verify() == []
    j.close()
    j2.close()


def test_a_restart_in_the_same_boot_keeps_the_decision_time(tmp_path: Path,
                                                             clocks: Clocks) -> None:
    first = Bus(tmp_path / "data", clocks)
    rider = _standard(first)
    try:
        assert first.tap(rider).decision.product == "standard"
        clocks.jump(-DAY)
        clocks.wait(5)
    finally:
        first.close()
    # the daemon restarts (same boot: CLOCK_MONOTONIC goes on) with the clock still wrong
    second = Bus(tmp_path / "data", clocks, cards=first.cards)
    try:
        clocks.wait(5)
        assert second.tap(rider).decision.product == "repeat"
        recs = second.journal().records(0, 100)
        times = [r.body["time"] for r in recs if "reason" in r.body]
        assert times == sorted(times), "decision times went backwards across the restart"
    finally:
        second.close()


def test_the_first_synchronisation_is_followed_and_journaled() -> None:
    c = Clocks()
    c.quality = ClockQuality.UNSYNCED
    c.skew -= 400 * DAY                           # booted with a flat RTC battery
    tb = TimeBase(wall=c.wall, mono=c.mono, quality=lambda: c.quality, floor=START - HOUR)
    assert tb.now() == pytest.approx(START - HOUR)   # never before the journal's last record
    (behind,) = tb.take_jumps()
    assert not behind.followed and behind.offset_s < -399 * DAY
    c.wait(60)
    c.skew += 400 * DAY                           # NTP steps the clock to the real time
    c.quality = ClockQuality.SYNCED
    assert tb.now() == pytest.approx(START + 60)
    (jump,) = tb.take_jumps()
    assert jump.followed and jump.step_s > 399 * DAY and jump.offset_s == 0
    c.jump(-DAY)                                  # a synchronised clock that jumps: not followed
    c.wait(1)
    assert tb.now() == pytest.approx(START + 61)
    (jump,) = tb.take_jumps()
    assert not jump.followed


def test_no_code_replay_across_clock_jumps(tmp_path: Path, qr_trust: TrustStore,
                                           qr_issuers: dict[str, SimIssuer]) -> None:
    """A forward jump used to purge the replay cache; the clock set back again then let the
    same code in a second time."""
    c = Clocks()
    journal = Journal(tmp_path / "j.db", "BUS-QR")
    store = PolicyStore(tmp_path / "s.db")
    tb = TimeBase(wall=c.wall, mono=c.mono, floor=journal.last_time, anchors=journal)
    pseudo = Pseudonymizer(b"clock-jump-test-key")
    verifier = CodeVerifier(qr_trust, pseudonymizer=pseudo, clock=tb.now)
    engine = Engine(load_ruleset(profile_path("bus_validator")), store, journal,
                    verifier=verifier, timebase=tb, clock_quality=lambda: ClockQuality.SYNCED)
    phone = Phone.enroll(qr_issuers["ES256"], holder_key="ab" * 16, now=START - HOUR)
    other = Phone.enroll(qr_issuers["ES256"], holder_key="cd" * 16, now=START - HOUR)

    def scan(text: str) -> Reason:
        return engine.handle(Presentation(PresentationKind.CODE, "test", 0,
                                          text=text)).decision.reason

    code = phone.new_code(now=START)
    assert scan(code) is Reason.ACCEPTED
    c.wait(5)
    c.jump(+DAY)                                  # a bad NTP answer
    assert scan(other.new_code(now=START + 5)) is Reason.ACCEPTED   # purges nothing
    c.wait(5)
    c.jump(-DAY)                                  # corrected
    assert scan(code) is Reason.CODE_REPLAYED
    journal.close()
    store.close()


def test_every_record_reaches_the_hub_across_clock_jumps(tmp_path: Path, clocks: Clocks,
                                                          broker: Mosquitto,
                                                          hub_process: HubProcess) -> None:
    hub_process.start()
    bus = Bus(tmp_path / "data", clocks, mqtt={"host": broker.host, "port": broker.port,
                                               "reconnect_min_s": 0.05,
                                               "reconnect_max_s": 0.5})
    try:
        riders = [h for h in bus.cards.population.tagged("standard")
                  if h.region.startswith("37")]    # Shandong cards pay the standard fare
        for jump in (0.0, -HOUR, -DAY, +DAY, +10 * DAY):
            clocks.jump(jump)
            for h in riders[:6]:
                clocks.wait(20)
                bus.tap(h)
            assert bus.terminal.uplink is not None
        assert bus.terminal.uplink.wait_synced(30), "the backlog did not reach the hub"
        journal = bus.journal()
        assert journal.verify() == []
        charged = [o for o in bus.outcomes if o.decision.product == "standard"]
        # 6 riders, 5 rounds, each rider's taps 120 s of real time apart: 30 fares, whatever
        # the wall clock did in between
        assert len(charged) == 6 * 5 and all(o.record is not None for o in bus.outcomes)
        last = journal.last_seq
    finally:
        bus.close()
    seqs = sorted(r["seq"] for r in hub_process.export() if r["terminal"] == "BUS-CLK")
    assert seqs == list(range(1, last + 1)), "lost or duplicated at the hub"
    assert hub_process.report()["totals"]["chain_breaks"] == 0
