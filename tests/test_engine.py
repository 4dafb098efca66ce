"""The decision engine end to end on real SQLite files: facts, rules, journal, counters."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.engine import Engine
from agent.journal import Journal
from agent.model import Location, Presentation, PresentationKind, Reason, Rejection
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from agent.store import PolicyInfo, PolicyStore
from drivers.sim_cards import credential_from_holder
from profiles import profile_path
from simulator.population import Population

TZ = ZoneInfo("Asia/Shanghai")
KEY = Pseudonymizer(b"k" * 32)


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t.timestamp()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    today = date(2026, 11, 25)
    pop = Population.generate(40, seed=3, today=today)
    store = PolicyStore(tmp_path / "store.db")
    ents = [{"holder_key": KEY.holder_key(h.ssn), "name": c, "valid_from": "",
             "valid_until": ""} for h in pop for c in h.categories]
    hot = [{"key": KEY.card_key(h.card_id), "kind": "card", "reason": "lost", "listed": ""}
           for h in pop if h.hotlisted]
    store.apply(entitlements=ents, hotlist=hot, info=PolicyInfo("city/370302/bus", 7, "x", ""))
    journal = Journal(tmp_path / "journal.db", "BUS-1")
    clock = Clock(datetime(2026, 11, 25, 8, 0, tzinfo=TZ))
    engine = Engine(load_ruleset(profile_path("bus_validator")), store, journal,
                    location=Location(route="19", vehicle="V1"), clock=clock)
    return pop, engine, journal, clock


def tap(engine: Engine, holder):  # type: ignore[no-untyped-def]
    p = Presentation(PresentationKind.CARD, "t", 0, credential=credential_from_holder(holder, KEY))
    return engine.handle(p)


def test_each_kind_of_holder_decides_as_its_rules_say(setup) -> None:  # type: ignore[no-untyped-def]
    pop, engine, journal, _ = setup
    expect = {"elderly": ("elderly_free", 0), "disabled": ("disabled_free", 0),
              "youfu": ("youfu_free", 0), "student": ("student_half", 100),
              "standard": ("standard", 200)}
    for tag, (product, amount) in expect.items():
        h = pop.tagged(tag)[0]
        out = tap(engine, h)
        assert out.decision.accepted, (tag, out.decision)
        assert (out.decision.product, out.decision.amount_cents) == (product, amount), tag
        assert out.record is not None and out.record.body["product"] == product
        assert out.record.body["policy"] == "city/370302/bus@7"
    hot = tap(engine, pop.tagged("hotlisted")[0])
    assert hot.decision.reason is Reason.HOTLISTED and not hot.decision.accepted
    exp = tap(engine, pop.tagged("expired")[0])
    assert exp.decision.reason is Reason.EXPIRED
    assert journal.last_seq == 7 and journal.verify() == []


def test_double_tap_is_already_paid_then_charged_after_60s(setup) -> None:  # type: ignore[no-untyped-def]
    pop, engine, _, clock = setup
    h = pop.tagged("standard")[0]
    assert tap(engine, h).decision.amount_cents == 200
    clock.t += 20
    again = tap(engine, h)
    assert again.decision.reason is Reason.ALREADY_PAID and again.decision.amount_cents == 0
    clock.t += 45  # 65 s after the counted tap
    assert tap(engine, h).decision.amount_cents == 200


def test_elderly_daily_limit_then_standard_fare(setup) -> None:  # type: ignore[no-untyped-def]
    pop, engine, journal, clock = setup
    h = next(x for x in pop.tagged("elderly"))
    products = []
    for _ in range(5):
        products.append(tap(engine, h).decision.product)
        clock.t += 3600
    assert products == ["elderly_free"] * 4 + ["standard"]
    holder = KEY.holder_key(h.ssn)
    assert journal.count(holder, "elderly_free", "2026-11-25") == 4


def test_no_personal_data_in_the_journal(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pop, engine, _, _ = setup
    for h in pop:
        tap(engine, h)
    raw = (tmp_path / "journal.db").read_bytes() + (tmp_path / "store.db").read_bytes()
    for h in pop:
        assert h.ssn.encode() not in raw
        assert h.name.encode() not in raw
        assert h.card_id.encode() not in raw
        assert h.birth_date.strftime("%Y%m%d").encode() not in raw


def test_rejections_are_journaled_except_card_removed(setup) -> None:  # type: ignore[no-untyped-def]
    _, engine, journal, _ = setup
    before = journal.last_seq
    pulled = engine.handle(Presentation(PresentationKind.CARD, "t", 0, rejection=Rejection(
        Reason.CARD_REMOVED, "pulled", journal=False)))
    assert pulled.record is None and pulled.actionable and pulled.decision.prompt.text
    assert journal.last_seq == before
    code = engine.handle(Presentation(PresentationKind.CODE, "cam", 0, text="garbage"))
    assert code.decision.reason is Reason.UNSUPPORTED_CODE and code.record is not None
    assert journal.last_seq == before + 1


@pytest.mark.expect_log("agent.engine", r"journal append failed: decision not acted on")
def test_journal_failure_means_no_action(setup) -> None:  # type: ignore[no-untyped-def]
    pop, engine, journal, _ = setup
    journal.close()
    out = tap(engine, pop.tagged("standard")[0])
    assert out.record is None and not out.actionable
    assert out.decision.reason is Reason.INTERNAL_ERROR and not out.decision.accepted
