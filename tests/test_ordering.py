"""Journaled before acted on: the ordering probe (tests/fixtures/ordering.py) in front of
every actuator of a running daemon, for sim and PC/SC cards, codes from a serial scanner,
a gate driven over a pty, and a journal that refuses to commit.

Each test checks the probe saw exactly the calls it should (so a check over an empty list
cannot pass) and that none acted on a row a second connection could not read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config import AgentConfig
from agent.engine import Outcome
from agent.journal import Journal
from agent.model import ClockQuality, Reason
from agent.store import PolicyStore
from drivers.prompt import SimPrompter
from drivers.scanner import SerialScannerSource
from drivers.sim_cards import SimCardSource
from simulator.demo import seed_store
from simulator.pcscd import VirtualCardRig
from simulator.phone import Phone, SimIssuer
from simulator.population import Population
from tests.fixtures.hub import wait_until
from tests.fixtures.ordering import OrderingProbe, ProbedTerminal, probe_terminal

TZ = ZoneInfo("Asia/Shanghai")
PROMPT = SimPrompter.name


def _terminal(tmp_path: Path, extra: dict[str, Any], *, profile: str = "bus_validator",
              prompter: SimPrompter | None = None, real_time: bool = False
              ) -> tuple[ProbedTerminal, list[Outcome]]:
    cfg: dict[str, Any] = {
        "terminal": {"id": "T-ORDER", "profile": profile, "data_dir": str(tmp_path / "data"),
                     "demo": True},
        "location": {"route": "19", "vehicle": "V1", "site": "x", "gate": "G1",
                     "direction": "in"},
        "mqtt": {"enabled": False},
        **extra,
    }
    now = [datetime(2026, 11, 25, 10, 0, tzinfo=TZ).timestamp()]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    terminal = ProbedTerminal(AgentConfig.model_validate(cfg),
                              actuators=[prompter or SimPrompter()],
                              clock=time.time if real_time else clock,
                              clock_quality=lambda: ClockQuality.SYNCED)
    outcomes: list[Outcome] = []
    terminal.add_listener(outcomes.append)
    return terminal, outcomes


def _wait_outcomes(outcomes: list[Outcome], n: int) -> None:
    wait_until(lambda: len(outcomes) >= n, 10, f"{n} decisions")


def _assert_all_durable(probe: OrderingProbe, outcomes: list[Outcome],
                        actuators: tuple[str, ...] = (PROMPT,)) -> None:
    assert outcomes, "no decision was made: nothing to check"
    acted = [o for o in outcomes if o.actionable]
    for name in actuators:
        calls = probe.calls_of(name)
        assert [c.seq for c in calls] == [o.record.seq if o.record else None for o in acted], \
            f"{name} was not called once per actionable outcome, in order"
    assert probe.violations() == [], "an actuator acted on a record not yet durable"


def _seeded(terminal: ProbedTerminal, population: Population) -> None:
    store = PolicyStore(terminal.cfg.store_path)
    seed_store(store, population, terminal.pseudonymizer)
    store.close()


def test_sim_cards_every_prompt_follows_the_commit(tmp_path: Path) -> None:
    terminal, outcomes = _terminal(tmp_path, {"cards": {"backend": "sim",
                                                        "options": {"rate_per_min": 0}}})
    cards = SimCardSource(terminal.pseudonymizer, population_size=40)
    terminal._sources_override = [cards]
    _seeded(terminal, cards.population)
    terminal.start()
    try:
        pop = cards.population
        holders = [pop.tagged(t)[0] for t in ("elderly", "standard", "student", "hotlisted")]
        for h in holders:
            cards.tap(h)
        cards.pull_mid_read()
        cards.tap(holders[0])
        _wait_outcomes(outcomes, len(holders) + 2)
        assert terminal.drain(10)
    finally:
        terminal.stop()
    probe = probe_terminal(terminal)
    _assert_all_durable(probe, outcomes)
    reasons = [c.reason for c in probe.calls_of(PROMPT)]
    assert Reason.HOTLISTED in reasons and Reason.CARD_REMOVED in reasons
    assert any(c.accepted for c in probe.calls_of(PROMPT))


@pytest.mark.pcsc
def test_pcsc_cards_every_prompt_follows_the_commit(tmp_path: Path,
                                                     card_rig: VirtualCardRig) -> None:
    terminal, outcomes = _terminal(tmp_path, {"cards": {
        "backend": "pcsc", "options": {"reader": card_rig.card_reader, "psam": "pcsc",
                                       "psam_reader": card_rig.psam_reader,
                                       "retry_s": 0.05}}})
    pop = Population.generate(30, seed=21)
    _seeded(terminal, pop)
    terminal.start()
    try:
        for i, tag in enumerate(("elderly", "hotlisted", "standard")):
            card_rig.present(pop.tagged(tag)[0])
            _wait_outcomes(outcomes, i + 1)
            card_rig.pull()
    finally:
        terminal.stop()
    probe = probe_terminal(terminal)
    _assert_all_durable(probe, outcomes)
    assert [c.reason for c in probe.calls_of(PROMPT)][1] is Reason.HOTLISTED
    assert all(o.record is not None for o in outcomes)


@pytest.fixture
def scanner_pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_codes_from_a_serial_scanner_every_prompt_follows_the_commit(
        tmp_path: Path, scanner_pty: tuple[int, str], qr_trust_doc: dict[str, object],
        qr_issuers: dict[str, SimIssuer]) -> None:
    master, tty = scanner_pty
    trust = tmp_path / "issuers.json"
    trust.write_text(json.dumps(qr_trust_doc), encoding="utf-8")
    terminal, outcomes = _terminal(tmp_path, {
        "cards": {"enabled": False},
        "codes": {"enabled": True, "backend": "scanner", "trust_file": str(trust),
                  "options": {"url": tty, "debounce_s": 0.0}}},
        real_time=True)                  # the phone signs its codes with the real time
    terminal.start()
    try:
        scanner = terminal.sources[0]
        assert isinstance(scanner, SerialScannerSource)
        # opening the pty flushes what was written before: scan only once it is open
        assert scanner.port_open.wait(5), "the scanner did not open its port"
        pop = Population.generate(10, seed=9)
        elderly = next(h for h in pop if "elderly" in h.tags)
        phone = Phone.enroll(next(iter(qr_issuers.values())),
                             holder_key=terminal.pseudonymizer.holder_key(elderly.ssn),
                             birth_date=elderly.birth_date)
        code = phone.new_code()
        for n, text in enumerate((code, code, "YKT1:garbage!"), start=1):
            os.write(master, text.encode() + b"\r\n")
            _wait_outcomes(outcomes, n)
    finally:
        terminal.stop()
    probe = probe_terminal(terminal)
    _assert_all_durable(probe, outcomes)
    assert [c.reason for c in probe.calls_of(PROMPT)][1:] == [Reason.CODE_REPLAYED,
                                                              Reason.MALFORMED_CODE]


def test_gate_opens_only_on_a_durable_record(tmp_path: Path) -> None:
    terminal, outcomes = _terminal(
        tmp_path, {"cards": {"backend": "sim", "options": {"rate_per_min": 0}},
                   "gate": {"enabled": True, "backend": "sim",
                            "options": {"direction": "in", "open_ms": 1500}}},
        profile="scenic_gate")
    cards = SimCardSource(terminal.pseudonymizer, population_size=40)
    terminal._sources_override = [cards]
    _seeded(terminal, cards.population)
    terminal.start()
    try:
        elderly = next(h for h in cards.population if "elderly" in h.tags)
        cards.tap(elderly)
        _wait_outcomes(outcomes, 1)
        controller = terminal.gates[0].gate.controller   # type: ignore[attr-defined]
        assert controller.wait_barrier("open_in", 5), "the gate did not open"
        cards.tap(cards.population.tagged("hotlisted")[0])
        _wait_outcomes(outcomes, 2)
        assert terminal.drain(10)
    finally:
        terminal.stop()
    probe = probe_terminal(terminal)
    _assert_all_durable(probe, outcomes, actuators=(PROMPT, "gate"))
    gate_calls = probe.calls_of("gate")
    assert gate_calls[0].accepted and gate_calls[0].durable


FAIL_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS probe_refuse BEFORE INSERT ON records
BEGIN SELECT RAISE(ABORT, 'injected: the disk refuses the record'); END
"""


@pytest.mark.expect_log("agent.engine", r"journal append failed: decision not acted on")
def test_a_journal_that_refuses_the_commit_moves_no_actuator(tmp_path: Path) -> None:
    prompter = SimPrompter()
    terminal, outcomes = _terminal(
        tmp_path, {"cards": {"backend": "sim", "options": {"rate_per_min": 0}},
                   "gate": {"enabled": True, "backend": "sim",
                            "options": {"direction": "in", "open_ms": 1500}}},
        profile="scenic_gate", prompter=prompter)
    cards = SimCardSource(terminal.pseudonymizer, population_size=40)
    terminal._sources_override = [cards]
    _seeded(terminal, cards.population)
    terminal.start()
    elderly = next(h for h in cards.population if "elderly" in h.tags)
    try:
        # the gate's own start-up events are journaled first
        wait_until(lambda: all(g.available for g in terminal.gates), 10, "the gate")
        assert terminal.drain(10) and terminal.journal is not None
        base = terminal.journal.last_seq
        # a real SQLite refusal, from outside the daemon: every INSERT into records aborts
        db = sqlite3.connect(terminal.cfg.journal_path)
        db.executescript(FAIL_TRIGGER)
        db.close()
        cards.tap(elderly)
        _wait_outcomes(outcomes, 1)
        failed = outcomes[0]
        assert failed.record is None and not failed.decision.accepted
        db = sqlite3.connect(terminal.cfg.journal_path)
        db.execute("DROP TRIGGER probe_refuse")
        db.commit()
        db.close()
        cards.tap(elderly)                 # the positive signal: the next tap is acted on
        _wait_outcomes(outcomes, 2)
        assert terminal.drain(10)
        controller = terminal.gates[0].gate.controller   # type: ignore[attr-defined]
        assert controller.wait_barrier("open_in", 5)
    finally:
        terminal.stop()
    probe = probe_terminal(terminal)
    assert probe.violations() == []
    accepted = outcomes[1].record
    assert accepted is not None and accepted.seq == base + 1
    for name in (PROMPT, "gate"):
        calls = probe.calls_of(name)
        assert [c.seq for c in calls] == [accepted.seq], f"{name} acted on the refused tap"
        assert calls[0].accepted and calls[0].durable
    # the rider of the refused tap was told the terminal is out of order; nothing opened
    assert probe.failsafes == [(PROMPT, "设备故障 请稍后"), ("gate", "设备故障 请稍后")]
    assert [e.text for e in prompter.history][0] == "设备故障 请稍后"
    assert len(prompter.history) == 2
    j = Journal(terminal.cfg.journal_path, "T-ORDER")
    assert j.verify() == [] and j.records(base, 10)[0].seq == accepted.seq
    j.close()


def test_the_probe_tells_an_uncommitted_row_from_a_committed_one(tmp_path: Path) -> None:
    """The probe's own check: a row inside an open transaction is not durable."""
    path = tmp_path / "journal.db"
    journal = Journal(path, "T-PROBE")
    first = journal.append({"event": "boot"})
    probe = OrderingProbe(path)
    assert probe.committed(first)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO records VALUES (?,?,?,?)", (2, "{}", "ab" * 32, 0.0))
    pending = type(first)(seq=2, body={}, hash="ab" * 32)
    assert not probe.committed(pending), "a row not yet committed was read as durable"
    writer.execute("COMMIT")
    assert probe.committed(pending)
    writer.close()
    journal.close()

