"""Settlement and statistics reports (:mod:`sync.hub.reports`) on real SQLite and real
PostgreSQL stores, fed by journals that the real decision engine wrote.

The must-hold test: a month of records spanning the month boundary in Beijing time; the
settlement statement's figures equal an independent sum over ``ykt hub export`` output,
to the fen, per category and route, on both backends.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import sys
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.cli import main
from agent.engine import Engine
from agent.hardware_events import journal_hardware_event
from agent.journal import Journal
from agent.model import Location, Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer
from agent.rules import load_ruleset
from agent.store import PolicyInfo, PolicyStore
from drivers.gate.protocol import GateEvent, GateEventKind
from drivers.sim_cards import credential_from_holder
from profiles import profile_path
from simulator.population import Population
from sync.hub.report_rollup import UNKNOWN
from sync.hub.reports import ReportError, build_report, settlement_statement
from sync.hub.store import HubStore, SqliteHubStore
from tests.test_hub import incoming

BJ = ZoneInfo("Asia/Shanghai")
KEY = Pseudonymizer(b"r" * 32)
OP_A, OP_B, OP_SCENIC = "青岛公交一公司", "交运集团", "崂山风景区"
BOUNDARY = datetime(2026, 10, 31, 16, 30, tzinfo=UTC)   # 2026-11-01 00:30 in Beijing


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t.timestamp()

    def __call__(self) -> float:
        return self.t


def _utc(y: int, m: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=UTC)


def _engine(tmp: Path, terminal: str, location: Location, store: PolicyStore,
            profile: str, start: datetime) -> tuple[Engine, Journal, Clock]:
    journal = Journal(tmp / f"{terminal}.db", terminal)
    clock = Clock(start)
    engine = Engine(load_ruleset(profile_path(profile)), store, journal, location=location,
                    clock=clock)
    return engine, journal, clock


def _tap(engine: Engine, holder: Any) -> Any:
    return engine.handle(Presentation(PresentationKind.CARD, "t", 0,
                                      credential=credential_from_holder(holder, KEY)))


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> list[Journal]:
    """Three buses of two operators, a tap every 20–140 min from 2026-09-30 15:00 UTC
    (23:00 in Beijing) to 2026-11-01 02:00 UTC, a tap exactly at :data:`BOUNDARY`, and a
    terminal whose records predate the settlement fields."""
    tmp = tmp_path_factory.mktemp("month")
    pop = Population.generate(80, seed=11, today=date(2026, 10, 15))
    store = PolicyStore(tmp / "policy.db")
    store.apply(entitlements=[{"holder_key": KEY.holder_key(h.ssn), "name": c,
                               "valid_from": "", "valid_until": ""}
                              for h in pop for c in h.categories],
                hotlist=[{"key": KEY.card_key(h.card_id), "kind": "card", "reason": "lost",
                          "listed": ""} for h in pop if h.hotlisted],
                info=PolicyInfo("city/370302/bus", 7, "x", ""))
    rng = random.Random(5)
    journals = []
    for terminal, route, op in (("BUS-19", "19路", OP_A), ("BUS-K51", "K51", OP_A),
                                ("BUS-3", "3路", OP_B)):
        engine, journal, clock = _engine(tmp, terminal, Location(route=route, vehicle=terminal,
                                                                 operator=op),
                                         store, "bus_validator", _utc(2026, 9, 30, 15))
        end = _utc(2026, 11, 1, 2).timestamp()
        boundary_done = False
        while clock.t < end:
            _tap(engine, rng.choice(pop.holders))
            clock.t += rng.randint(20, 140) * 60
            if not boundary_done and clock.t >= BOUNDARY.timestamp():
                clock.t, boundary_done = BOUNDARY.timestamp(), True
        journals.append(journal)
    # a scenic gate: free entries for the elderly claim the ticket; some visitors never go
    # through (the gate times out): their entries are given back, and not claimed
    engine, journal, clock = _engine(tmp, "SCENIC-1", Location(site="崂山", gate="G1",
                                                                operator=OP_SCENIC),
                                     store, "scenic_gate", _utc(2026, 9, 30, 23))
    recent: OrderedDict[int, Any] = OrderedDict()
    while clock.t < _utc(2026, 11, 1, 2).timestamp():
        out = _tap(engine, rng.choice(pop.holders))
        if out.decision.accepted and out.record is not None:
            recent[out.record.seq] = out
            kind = GateEventKind.TIMED_OUT if rng.random() < 0.2 else GateEventKind.PASSED
            journal_hardware_event(engine, [], recent, GateEvent(
                kind, 0, gate="G1", record_seq=out.record.seq))
        clock.t += rng.randint(5, 60) * 60
    journals.append(journal)
    old = Journal(tmp / "old.db", "BUS-OLD")     # before terminals journaled the fields
    for i, product in enumerate(["elderly_free", "standard", "standard", "elderly_free"]):
        old.append({"profile": "bus_validator", "loc": {"route": "19路"}, "accepted": True,
                    "reason": "accepted", "product": product,
                    "amount": 200 if product == "standard" else 0},
                   at=_utc(2026, 10, 10 + i, 3).timestamp())
    journals.append(old)
    return journals


@pytest.fixture(params=["sqlite", "pg"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``--db`` of an empty hub store: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "hub.db")
    return str(request.getfixturevalue("pg_dsn"))


def open_store(db: str) -> HubStore:
    if db.startswith("postgresql://"):
        from sync.hub.pgstore import PgHubStore
        return PgHubStore(db)
    return SqliteHubStore(db)


@pytest.fixture
def loaded(db: str, month: list[Journal]) -> Iterator[tuple[str, HubStore]]:
    store = open_store(db)
    for j in month:
        recs = incoming(j, 0, 100_000)
        for i in range(0, len(recs), 100):       # in batches, as terminals send them
            store.ingest(j.terminal, recs[i:i + 100])
    yield db, store
    store.close()


def exported(db: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["hub", "export", "--db", db]) == 0
    return [json.loads(line)["body"] for line in capsys.readouterr().out.splitlines()]


def auditor_sum(bodies: list[dict[str, Any]], month: str, operator: str | None
                ) -> dict[tuple[str, ...], dict[str, int]]:
    """The settlement statement recomputed from export lines, as docs/hub.md tells an
    auditor: accepted decisions whose Beijing-time month is ``month``."""
    out: dict[tuple[str, ...], dict[str, int]] = {}
    for b in bodies:
        if "event" in b:
            if "undo" not in b:
                continue
            sign, fig = -1, b["undo"]
        elif b.get("accepted") is True:
            sign, fig = 1, b
        else:
            continue
        local = datetime.fromisoformat(b["time"].replace("Z", "+00:00")).astimezone(BJ)
        loc = b.get("loc", {})
        if local.strftime("%Y-%m") != month or (operator is not None
                                                and loc.get("operator", "") != operator):
            continue
        category = fig.get("category", UNKNOWN)
        key = ((loc.get("operator", ""),) if operator is None else ()) + (
            category, loc.get("route", ""))
        s = out.setdefault(key, dict.fromkeys(("rides", "amount_fen", "fare_std_fen",
                                               "claim_fen", "missing_fields"), 0))
        s["rides"] += sign
        s["amount_fen"] += sign * fig["amount"]
        s["missing_fields"] += "category" not in fig
        if category not in ("", UNKNOWN):
            s["fare_std_fen"] += sign * fig["fare_std"]
            s["claim_fen"] += sign * (fig["fare_std"] - fig["amount"])
    return out


def run_doc_recipe(bodies: list[dict[str, Any]], month: str, operator: str
                   ) -> dict[tuple[str, ...], list[int]]:
    """The auditor's script of docs/hub.md, run as printed there on the export lines."""
    text = (Path(__file__).parents[1] / "docs" / "hub.md").read_text(encoding="utf-8")
    code = text.split("### Re-deriving a statement")[1].split("```python\n")[1].split("```")[0]
    code = code.replace('MONTH, OPERATOR = ZoneInfo("Asia/Shanghai"), "2026-10", "青岛公交一公司"',
                        f"MONTH, OPERATOR = ZoneInfo('Asia/Shanghai'), {month!r}, {operator!r}")
    assert repr(operator) in code
    stdin = io.StringIO("".join(json.dumps({"body": b}, ensure_ascii=False) + "\n"
                                for b in bodies))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        old, sys.stdin = sys.stdin, stdin
        try:
            exec(compile(code, "docs/hub.md", "exec"), {"__name__": "audit"})
        finally:
            sys.stdin = old
    out = {}
    for line in stdout.getvalue().splitlines():
        cat, route, *nums = line.split("\t")
        out[(cat, route)] = [int(n) for n in nums]
    return out


def test_settlement_equals_an_independent_sum_over_the_export(
        loaded: tuple[str, HubStore], capsys: pytest.CaptureFixture[str]) -> None:
    db, store = loaded
    bodies = exported(db, capsys)
    for operator in (OP_A, OP_B, OP_SCENIC, None):
        st = settlement_statement(store, month="2026-10", operator=operator,
                                  tz="Asia/Shanghai")
        groups = st.columns[:len(st.columns) - len(st.totals)]
        got = {tuple(r[g] for g in groups): {m: r[m] for m in st.totals} for r in st.rows}
        expected = auditor_sum(bodies, "2026-10", operator)
        assert got == expected, operator
        for m in st.totals:
            assert st.totals[m] == sum(v[m] for v in expected.values())
        if operator is not None:     # the script docs/hub.md gives auditors agrees too
            assert run_doc_recipe(bodies, "2026-10", operator) == {
                k: [v["rides"], v["amount_fen"], v["fare_std_fen"], v["claim_fen"]]
                for k, v in expected.items()}
    # entries nobody used are not claimed: the scenic area claims its passed entries only
    scenic = settlement_statement(store, month="2026-10", operator=OP_SCENIC,
                                  tz="Asia/Shanghai")
    undone = [b["undo"] for b in bodies if b.get("event") == "not_entered" and "undo" in b]
    assert undone and any(u["category"] for u in undone)
    entries = [b for b in bodies if b.get("loc", {}).get("operator") == OP_SCENIC
               and b.get("accepted") is True and b.get("category")]
    assert 0 < scenic.totals["claim_fen"] < sum(b["fare_std"] for b in entries)
    st = settlement_statement(store, month="2026-10", operator=OP_A, tz="Asia/Shanghai")
    # the figures are real: concessions claimed, fares taken, categories and both routes
    cats = {r["category"] for r in st.rows}
    assert {"elderly", "student", ""} <= cats and {r["route"] for r in st.rows} == {"19路",
                                                                                   "K51"}
    assert st.totals["claim_fen"] > 0 and st.totals["amount_fen"] > 0
    assert st.totals["missing_fields"] == 0
    # the ride at 2026-10-31T16:30Z is on November 1st in Beijing: November's, not October's
    at_boundary = [b for b in bodies if b["time"].startswith("2026-10-31T16:30")]
    assert len(at_boundary) == 3 and all(b.get("accepted") for b in at_boundary)
    nov = settlement_statement(store, month="2026-11", operator=None, tz="Asia/Shanghai")
    assert nov.totals["rides"] == sum(
        v["rides"] for v in auditor_sum(bodies, "2026-11", None).values()) >= 3
    # cut at UTC instead, the boundary rides fall into October
    utc = settlement_statement(store, month="2026-10", operator=None, tz="UTC")
    assert utc.meta["from_utc"] == "2026-10-01T00:00:00Z"
    assert st.meta["from_utc"] == "2026-09-30T16:00:00Z"
    assert st.meta["to_utc"] == "2026-10-31T16:00:00Z"
    assert utc.totals["rides"] != settlement_statement(
        store, month="2026-10", operator=None, tz="Asia/Shanghai").totals["rides"]


def test_old_records_are_reported_with_a_marker(loaded: tuple[str, HubStore]) -> None:
    _, store = loaded
    st = settlement_statement(store, month="2026-10", operator="", tz="Asia/Shanghai")
    assert st.rows == [
        {"category": UNKNOWN, "route": "19路", "rides": 4, "amount_fen": 400,
         "fare_std_fen": 0, "claim_fen": 0, "missing_fields": 4}]
    rep = build_report(store, group_by=["terminal"], date_from=date(2026, 10, 1),
                       date_to=date(2026, 10, 31))
    old = next(r for r in rep.rows if r["terminal"] == "BUS-OLD")
    assert (old["records"], old["accepted"], old["missing_fields"]) == (4, 4, 4)


def test_timezone_cuts_days_at_local_midnight(db: str, tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", "BUS-T")
    for stamp, amount in ((_utc(2026, 10, 31, 15, 59), 100), (_utc(2026, 10, 31, 16, 0), 200),
                          (_utc(2026, 11, 1, 3, 0), 400)):
        j.append({"accepted": True, "reason": "accepted", "product": "standard",
                  "amount": amount, "category": ""}, at=stamp.timestamp())
    store = open_store(db)
    try:
        store.ingest("BUS-T", incoming(j))
        bj = build_report(store, group_by=["day"])
        assert [(r["day"], r["amount_fen"]) for r in bj.rows] == [("2026-10-31", 100),
                                                                  ("2026-11-01", 600)]
        utc = build_report(store, group_by=["month", "day"], tz="UTC")
        assert [(r["month"], r["day"], r["amount_fen"]) for r in utc.rows] == [
            ("2026-10", "2026-10-31", 300), ("2026-11", "2026-11-01", 400)]
        hours = build_report(store, group_by=["hour"])
        assert [(r["hour"], r["records"]) for r in hours.rows] == [("00", 1), ("11", 1),
                                                                   ("23", 1)]
        one = build_report(store, group_by=["decision"], date_from=date(2026, 11, 1),
                           date_to=date(2026, 11, 1))
        assert one.totals["amount_fen"] == 600
        with pytest.raises(ReportError, match="Mars/Base"):
            build_report(store, group_by=["day"], tz="Mars/Base")
        with pytest.raises(ReportError, match="whole"):
            build_report(store, group_by=["day"], tz="Asia/Kolkata")
        with pytest.raises(ReportError, match="weekday"):
            build_report(store, group_by=["weekday"])
    finally:
        store.close()


def test_days_across_a_daylight_saving_change(db: str, tmp_path: Path) -> None:
    """Where the offset changes within the period, hours are folded one by one."""
    j = Journal(tmp_path / "j.db", "TRAM-1")
    for stamp in (_utc(2026, 10, 24, 21, 30), _utc(2026, 10, 24, 22, 30),
                  _utc(2026, 10, 25, 22, 30), _utc(2026, 10, 25, 23, 30)):
        j.append({"accepted": True, "reason": "accepted", "product": "standard",
                  "amount": 100, "category": ""}, at=stamp.timestamp())
    store = open_store(db)
    try:
        store.ingest("TRAM-1", incoming(j))
        rep = build_report(store, group_by=["day"], tz="Europe/Berlin")
        assert [(r["day"], r["records"]) for r in rep.rows] == [
            ("2026-10-24", 1), ("2026-10-25", 2), ("2026-10-26", 1)]
        hours = build_report(store, group_by=["day", "hour"], tz="Europe/Berlin",
                             date_from=date(2026, 10, 25), date_to=date(2026, 10, 25))
        assert [(r["day"], r["hour"]) for r in hours.rows] == [("2026-10-25", "00"),
                                                               ("2026-10-25", "23")]
    finally:
        store.close()


def test_visitors_are_people_who_passed_not_accepted_decisions(db: str, tmp_path: Path
                                                                ) -> None:
    """22 accepted entries at a museum gate; 3 visitors never went through (the gate timed
    out): the visitor count is 19, from the gate's passage events."""
    pop = Population.generate(40, seed=2, today=date(2026, 10, 15))
    policy = PolicyStore(tmp_path / "p.db")
    policy.apply(entitlements=[], hotlist=[], info=PolicyInfo("museum", 1, "x", ""))
    engine, journal, clock = _engine(tmp_path, "MUSEUM-1", Location(site="市博物馆", gate="G1",
                                                                    operator="市博物馆"),
                                     policy, "museum_gate", _utc(2026, 10, 14, 2))
    recent: OrderedDict[int, Any] = OrderedDict()
    visitors = [h for h in pop.holders if not h.hotlisted][:22]
    assert len(visitors) == 22
    for i, holder in enumerate(visitors):
        out = _tap(engine, holder)
        assert out.decision.accepted and out.record is not None
        recent[out.record.seq] = out
        kind = GateEventKind.TIMED_OUT if i % 7 == 3 else GateEventKind.PASSED
        journal_hardware_event(engine, [], recent, GateEvent(
            kind, 0, gate="G1", direction="in", record_seq=out.record.seq))
        clock.t += 60
    store = open_store(db)
    try:
        store.ingest("MUSEUM-1", incoming(journal))
        rep = build_report(store, group_by=["site", "day"])
        assert rep.rows == [{"site": "市博物馆", "day": "2026-10-14", "records": 44,
                             "accepted": 22, "denied": 0, "passed": 19, "concessions": 0,
                             "amount_fen": 0, "fare_std_fen": 0, "claim_fen": 0,
                             "missing_fields": 0}]
    finally:
        store.close()


def test_cli_text_csv_xlsx_json(loaded: tuple[str, HubStore], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    db, store = loaded
    expected = settlement_statement(store, month="2026-10", operator=OP_A, tz="Asia/Shanghai")
    capsys.readouterr()
    base = ["hub", "report", "settlement", "--db", db, "--month", "2026-10", "--operator", OP_A]
    assert main(base) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("statement: settlement  operator: 青岛公交一公司")
    header, total = text[1], text[-1]
    assert header.split() == expected.columns and total.split()[0] == "total"
    # columns line up by display width (CJK counts two): every number ends where its
    # header ends
    from agent.textcols import display_width
    end = display_width(header)
    assert all(display_width(line) == end for line in text[2:])
    assert main([*base, "--format", "csv", "--out", str(tmp_path / "s.csv")]) == 0
    raw = (tmp_path / "s.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    import csv
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert rows[0] == expected.columns and len(rows) == len(expected.rows) + 2
    assert rows[-1][0] == "total" and int(rows[-1][-2]) == expected.totals["claim_fen"]
    assert main([*base, "--format", "xlsx", "--out", str(tmp_path / "s.xlsx")]) == 0
    from openpyxl import load_workbook
    wb = load_workbook(tmp_path / "s.xlsx")
    ws = wb["report"]
    cells = [[c.value for c in r] for r in ws.iter_rows()]
    assert cells[0] == expected.columns
    first = expected.rows[0]
    assert cells[1] == [first[c] if first[c] != "" else None for c in expected.columns]
    assert cells[-1][0] == "total"
    assert cells[-1][expected.columns.index("claim_fen")] == expected.totals["claim_fen"]
    assert isinstance(cells[-1][-1], int)
    about = dict((r[0].value, r[1].value) for r in wb["about"].iter_rows())
    assert about["tz"] == "Asia/Shanghai" and about["month"] == "2026-10"
    assert main(["hub", "report", "--db", db, "--by", "route,category", "--from",
                 "2026-10-01", "--to", "2026-10-31", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["columns"][:2] == ["route", "category"]
    assert doc["totals"] == build_report(store, group_by=["route", "category"],
                                         date_from=date(2026, 10, 1),
                                         date_to=date(2026, 10, 31)).totals
    # usage errors exit 2 with the reason, no traceback
    assert main(["hub", "report", "--db", db, "--by", "weekday"]) == 2
    assert "weekday" in capsys.readouterr().err
    assert main(["hub", "report", "settlement", "--db", db, "--month", "2026-13"]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
    assert main(["hub", "report", "--db", db, "--format", "xlsx"]) == 2
    assert "--out" in capsys.readouterr().err
