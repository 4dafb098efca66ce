"""Gate, museum and kiosk profiles through the engine: entries, capacity, queue numbers."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.engine import Engine
from agent.journal import Journal
from agent.model import Location, Presentation, PresentationKind, Reason
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from agent.store import PolicyStore
from drivers.sim_cards import credential_from_holder
from profiles import profile_path
from simulator.population import Population

TZ = ZoneInfo("Asia/Shanghai")
KEY = Pseudonymizer(b"p" * 32)
POP = Population.generate(30, seed=5)


def _engine(tmp_path: Path, profile: str, hour: int = 10) -> tuple[Engine, list[float]]:
    clock = [datetime(2026, 11, 25, hour, 0, tzinfo=TZ).timestamp()]
    store = PolicyStore(tmp_path / "s.db")
    eng = Engine(load_ruleset(profile_path(profile)), store, Journal(tmp_path / "j.db", "G1"),
                 location=Location(site="x", gate="G1", direction="in"), clock=lambda: clock[0])
    return eng, clock


def _tap(eng: Engine, i: int, service: str = ""):  # type: ignore[no-untyped-def]
    h = POP.holders[i]
    return eng.handle(Presentation(PresentationKind.CARD, "t", 0, service=service,
                                   credential=credential_from_holder(h, KEY)))


def test_scenic_not_entered_gives_the_days_entry_back(tmp_path: Path) -> None:
    eng, clock = _engine(tmp_path, "scenic_gate")
    elderly = next(i for i, h in enumerate(POP.holders) if h.tags == ("elderly",)
                   and not h.categories)
    first = _tap(eng, elderly)
    assert first.decision.accepted and first.record is not None
    clock[0] += 30
    assert _tap(eng, elderly).decision.reason is Reason.PASSBACK
    ev = eng.journal_event("not_entered", {"gate": "G1"}, undo=first)
    assert ev is not None and ev.body["ref_seq"] == first.record.seq
    clock[0] += 30
    again = _tap(eng, elderly)
    assert again.decision.accepted, "a visitor who never passed keeps the day's entry"
    assert eng.journal.verify() == []


def test_museum_slot_capacity_counts_visitors_per_slot(tmp_path: Path) -> None:
    eng, clock = _engine(tmp_path, "museum_gate")
    text = profile_path("museum_gate").read_text(encoding="utf-8").replace(
        "slot_capacity = 300", "slot_capacity = 3").replace("visitors = 300", "visitors = 3").replace(
        "visitors = 299", "visitors = 2")
    small = load_ruleset(tmp_path / "m.toml", text=text)
    eng.swap(ruleset=small)
    reasons = []
    for i in range(5):
        reasons.append(_tap(eng, i).decision.reason)
        clock[0] += 60
    assert reasons == [Reason.ACCEPTED] * 3 + [Reason.CAPACITY_FULL] * 2
    clock[0] += 3600                     # next slot
    assert _tap(eng, 6).decision.accepted


def test_kiosk_issues_increasing_queue_numbers_per_service(tmp_path: Path) -> None:
    eng, clock = _engine(tmp_path, "service_kiosk", hour=9)
    got = []
    for i, svc in enumerate(["A", "A", "B", "", "C", "B"]):
        out = _tap(eng, i, svc)
        clock[0] += 10
        if out.decision.accepted and out.decision.product != "renew_card":
            assert out.record is not None
            got.append(out.record.body["queue_no"])
            assert out.record.body["queue_no"] in out.decision.prompt.text
    assert got[:3] == ["A001", "A002", "B001"] and "A003" in got and "C001" in got
    assert "B002" in got


def test_kiosk_expired_card_gets_a_renewal_number(tmp_path: Path) -> None:
    eng, _ = _engine(tmp_path, "service_kiosk", hour=9)
    h = POP.tagged("expired")[0]
    cred = credential_from_holder(h, KEY)
    out = eng.handle(Presentation(PresentationKind.CARD, "t", 0, credential=cred, service="B"))
    assert out.decision.product == "renew_card" and out.record is not None
    assert out.record.body["queue_no"] == "R001"
    hot = replace(cred, credential_key="x" * 32)
    eng.store.apply(hotlist=[{"key": "x" * 32, "kind": "card", "reason": "lost", "listed": ""}])
    out = eng.handle(Presentation(PresentationKind.CARD, "t", 0, credential=hot))
    assert out.decision.reason is Reason.HOTLISTED


def test_museum_visitor_counts_per_hour(tmp_path: Path) -> None:
    from agent.cli.agent import journal_stats

    eng, clock = _engine(tmp_path, "museum_gate")
    for i in range(3):
        _tap(eng, i)
        clock[0] += 600
    clock[0] += 3600
    _tap(eng, 5)
    _tap(eng, 5)                                   # passback: not a visitor
    assert journal_stats(eng.journal, "hour") == {"2026-11-25 10:00": 3, "2026-11-25 11:00": 1}
    assert journal_stats(eng.journal, "reason") == {"accepted": 4, "passback": 1}


def test_museum_not_entered_frees_the_time_slot_too(tmp_path: Path) -> None:
    eng, clock = _engine(tmp_path, "museum_gate")
    text = profile_path("museum_gate").read_text(encoding="utf-8").replace(
        "slot_capacity = 300", "slot_capacity = 1").replace("visitors = 300", "visitors = 1").replace(
        "visitors = 299", "visitors = 0")
    eng.swap(ruleset=load_ruleset(tmp_path / "m.toml", text=text))
    first = _tap(eng, 0)
    assert first.decision.accepted
    clock[0] += 60
    assert _tap(eng, 1).decision.reason is Reason.CAPACITY_FULL
    assert eng.journal_event("not_entered", undo=first) is not None
    clock[0] += 60
    assert _tap(eng, 1).decision.accepted, "the slot the first visitor did not use is free"
    clock[0] += 3600                                  # the next slot
    assert _tap(eng, 0).decision.accepted, "and the first visitor keeps the day's entry"
