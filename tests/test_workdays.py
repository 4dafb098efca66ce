"""Rules cities write: working days and holidays (the calendar part), time of day judged
from the decision time, card regions (local / province / other, mutual recognition), and
what happens when the decision clock cannot be trusted."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.engine import Engine
from agent.journal import Journal
from agent.model import ClockQuality, Credential, Presentation, PresentationKind
from agent.policy.calendar_part import read_calendar
from agent.policy.errors import BundleRefused, Refusal
from agent.regions import RegionScope, area_prefix
from agent.rules import Facts, RuleSet, RuleSetError, load_ruleset
from agent.store import PolicyStore
from agent.timebase import TimeBase
from agent.tomlconf import ConfigFileError
from agent.workdays import (
    WorkCalendar,
    calendar_from_source,
    day_kind,
    parse_calendar_part,
)
from profiles import PROFILE_DIR, profile_path
from sync.hub.calendar_build import calendar_bytes

TZ = ZoneInfo("Asia/Shanghai")
CN_2026 = PROFILE_DIR / "calendars" / "cn-2026.toml"


def _cn2026() -> WorkCalendar:
    return calendar_from_source(CN_2026.read_text(encoding="utf-8"), str(CN_2026))


# ----------------------------------------------------------------------------- calendar
def test_the_shipped_2026_calendar_knows_holidays_and_make_up_working_days() -> None:
    cal = _cn2026()
    assert day_kind(date(2026, 10, 1), cal) == day_kind(date(2026, 10, 7), cal)
    assert day_kind(date(2026, 10, 1), cal).holiday and not day_kind(date(2026, 10, 1), cal).working
    assert day_kind(date(2026, 10, 10), cal).working          # a Saturday: 调休上班
    assert day_kind(date(2026, 9, 20), cal).working           # a Sunday: 调休上班
    assert not day_kind(date(2026, 10, 10)).working           # the weekday rule alone
    assert day_kind(date(2026, 10, 9), cal).working           # an ordinary Friday
    sat = day_kind(date(2026, 11, 28), cal)
    assert not sat.working and not sat.holiday                # a weekend is no holiday
    assert day_kind(date(2026, 2, 16), cal).holiday           # 春节
    assert cal.covers(date(2026, 5, 1)) and not cal.covers(date(2027, 1, 1))
    assert len(cal.holidays) == 33 and len(cal.workdays) == 6


def test_the_part_is_canonical_and_round_trips() -> None:
    cal = _cn2026()
    data = cal.part_bytes()
    assert parse_calendar_part(data) == cal
    assert calendar_bytes(CN_2026) == data                    # the hub's bytes, same hash
    assert json.loads(data)["type"] == "ykt-calendar"
    assert read_calendar(None) is None


@pytest.mark.parametrize(("doc", "message"), [
    ({"type": "ykt-calendar", "v": 1, "name": "x", "years": [2026],
      "workdays": ["2026-10-09"]}, "only a Saturday or Sunday"),
    ({"type": "ykt-calendar", "v": 1, "name": "x", "years": [2026],
      "holidays": {"2026-10-10": "国庆节"}, "workdays": ["2026-10-10"]},
     "both a holiday and a working day"),
    ({"type": "ykt-calendar", "v": 1, "name": "x", "years": [2026],
      "holidays": {"2027-01-01": "元旦"}}, "outside the years"),
    ({"type": "ykt-calendar", "v": 1, "name": "x", "years": [2026],
      "holidays": {"2026-02-30": "?"}}, "not a date"),
    ({"type": "ykt-calendar", "v": 1, "name": "x", "years": []}, "years"),
    ({"type": "hotlist", "v": 1}, "not a ykt-calendar"),
    ({"type": "ykt-calendar", "v": 1, "name": "x", "years": [2026], "extra": 1}, "unknown"),
    ([1, 2], "not a ykt-calendar"),
])
def test_a_bad_calendar_part_is_refused_as_malformed(doc: object, message: str) -> None:
    data = json.dumps(doc).encode()
    with pytest.raises(ValueError, match=message):
        parse_calendar_part(data)
    with pytest.raises(BundleRefused) as err:
        read_calendar(data)
    assert err.value.refusal is Refusal.MALFORMED
    with pytest.raises(BundleRefused):
        read_calendar(b"\xff not json")


def test_a_bad_calendar_source_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "cal.toml"
    src.write_text('name = "x"\nyears = [2026]\n[[holiday]]\nname = "国庆节"\n'
                   "from = 2026-10-07\nto = 2026-10-01\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{src}: holiday 1: 'to' must be"):
        calendar_bytes(src)


# ----------------------------------------------------------------------------- regions
def test_area_codes_name_their_level_and_cards_are_classified() -> None:
    assert (area_prefix("370300"), area_prefix("370000"), area_prefix("370302")) == \
        ("3703", "37", "370302")
    with pytest.raises(ValueError):
        area_prefix("3703")
    zibo = RegionScope.of("370300", ["370100"])           # Jinan cards count as local
    assert [zibo.classify(r) for r in ("370302", "370102", "370202", "110101", "", "x")] == \
        ["local", "local", "province", "other", "unknown", "unknown"]
    chongqing = RegionScope.of("500000", ["510000"])      # 川渝互认
    assert [chongqing.classify(r) for r in ("500103", "510104", "520102")] == \
        ["local", "local", "other"]


def _rules(tmp_path: Path, body: str, profile_extra: str = 'region = "500000"\n',
           expect: str = "not_entitled") -> Path:
    path = tmp_path / "r.toml"
    path.write_text(f"""
[profile]
name = "bus_validator"
kind = "bus_validator"
{profile_extra}
[prompts]
not_entitled = {{ text = "无效卡" }}
accepted = {{ text = "请上车" }}
{body}
[[vector]]
name = "anyone"
time = 2026-11-25T10:00:00+08:00
expect_reason = "{expect}"
""", encoding="utf-8")
    return path


def test_region_conditions_and_their_load_checks(tmp_path: Path) -> None:
    rs = load_ruleset(_rules(tmp_path, """
[[rule]]
id = "youfu-of-sichuan"
when = { entitled_any = ["youfu"], issued_in = ["510000"] }
accept = "accepted"
[[rule]]
id = "locals"
when = { card_region = ["local"] }
accept = "accepted"
[[rule]]
id = "nobody"
when = { card_region = ["unknown"], kind = ["none"] }
deny = "not_entitled"
""", 'region = "500000"\nlocal_regions = ["510100"]\n'))
    now = datetime(2026, 11, 25, 10, tzinfo=TZ)
    youfu = frozenset({"youfu"})
    assert rs.evaluate(Facts(now=now, entitlements=youfu, region="510703")).rule_id == \
        "youfu-of-sichuan"
    assert rs.evaluate(Facts(now=now, entitlements=youfu, region="520102")).rule_id == \
        "default-deny"
    assert rs.evaluate(Facts(now=now, region="510104")).rule_id == "locals"   # 成都, 互认
    assert rs.evaluate(Facts(now=now, region="510703")).rule_id == "default-deny"
    with pytest.raises(ConfigFileError, match="card_region needs the terminal's region"):
        load_ruleset(_rules(tmp_path, '[[rule]]\nid = "l"\nwhen = { card_region = ["local"] }'
                            '\naccept = "accepted"\n', ""))
    with pytest.raises(ConfigFileError, match="not a 6-digit"):
        load_ruleset(_rules(tmp_path, '[[rule]]\nid = "l"\nwhen = { issued_in = ["51"] }'
                            '\naccept = "accepted"\n'))


# ----------------------------------------------------------------------------- time
def test_time_conditions_hold_for_the_holder_when_the_clock_is_not_trusted(tmp_path: Path
                                                                           ) -> None:
    rs = load_ruleset(_rules(tmp_path, """
[[rule]]
id = "closed"
when = { hours_outside = "09:00-17:00" }
deny = "outside_hours"
prompt = { text = "不在服务时间", short = "非服务" }
[[rule]]
id = "free-off-peak-working-days"
when = { working_day = true, hours_within = "10:00-16:00" }
accept = "accepted"
[[rule]]
id = "holiday-free"
when = { holiday = true }
accept = "accepted"
""", expect="accepted"))
    assert rs.uses_calendar
    at = datetime(2026, 11, 25, 8, tzinfo=TZ)                 # Wednesday, before opening
    assert rs.evaluate(Facts(now=at)).rule_id == "closed"
    # an untrusted clock: the denial's time condition does not hold, the concession's does
    assert rs.evaluate(Facts(now=at, clock_trusted=False)).rule_id == \
        "free-off-peak-working-days"
    noon = at.replace(hour=12)
    assert rs.evaluate(Facts(now=noon)).rule_id == "free-off-peak-working-days"
    assert rs.evaluate(Facts(now=noon, working_day=False)).rule_id == "default-deny"
    assert rs.evaluate(Facts(now=noon, working_day=False, holiday=True)).rule_id == \
        "holiday-free"


def test_vectors_take_the_day_as_a_fact_else_the_weekday_rule(tmp_path: Path) -> None:
    body = ('[[rule]]\nid = "w"\nwhen = { working_day = true }\naccept = "accepted"\n'
            '[[vector]]\nname = "a Saturday is no working day"\n'
            'time = 2026-11-28T10:00:00+08:00\nexpect_reason = "not_entitled"\n'
            '[[vector]]\nname = "调休 Saturday given as a working day"\n'
            'time = 2026-10-10T10:00:00+08:00\nworking_day = true\nexpect_reason = "accepted"\n')
    load_ruleset(_rules(tmp_path, body, expect="accepted").as_posix())
    wrong = body.replace('working_day = true\nexpect_reason = "accepted"',
                         'expect_reason = "accepted"')
    with pytest.raises(RuleSetError, match="调休 Saturday"):
        load_ruleset(_rules(tmp_path, wrong, expect="accepted"))


def test_shipped_profiles_carry_vectors_for_each_new_condition() -> None:
    for name in ("bus_validator", "scenic_gate"):
        rs = load_ruleset(profile_path(name))
        vectors = rs.spec.vector
        assert rs.uses_calendar and rs.profile.region
        assert any(v.working_day is False for v in vectors), name
        assert any(v.working_day is True and v.time.weekday() >= 5 for v in vectors), name
        assert any(not v.clock_trusted for v in vectors), name
        assert {RegionScope.of(rs.profile.region, rs.profile.local_regions).classify(v.region)
                for v in vectors} >= {"local", "province"}, name
    bus = load_ruleset(profile_path("bus_validator"))
    assert any(r.when.issued_in for r in bus.spec.rule)       # a per-region concession
    assert any(r.product == "nonlocal" for r in bus.spec.rule)


def test_config_validate_flags_rules_that_need_a_calendar() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate",
                          "--profile", "bus_validator", "--profile", "museum_gate", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and len(doc["warnings"]) == 1
    assert "bus_validator" in doc["warnings"][0] and "调休" in doc["warnings"][0]


# ----------------------------------------------------------------------------- engine
class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _engine(tmp_path: Path, at: datetime, **kw: object) -> Engine:
    store = PolicyStore(tmp_path / "store.db")
    return Engine(load_ruleset(profile_path("bus_validator")), store,
                  Journal(tmp_path / "journal.db", "BUS-W"), clock=_Clock(at.timestamp()),
                  **kw)  # type: ignore[arg-type]


def _offpeak_rider(n: int, region: str = "370302") -> Presentation:
    cred = Credential("ssc_card", f"{n:032x}", f"{n + 1000:032x}", region=region,
                      categories=frozenset({"elderly_offpeak"}))
    return Presentation(PresentationKind.CARD, "t", 0, credential=cred)


def test_the_engine_judges_days_by_its_calendar_in_the_profile_timezone(tmp_path: Path
                                                                        ) -> None:
    # 2026-10-01 00:30 in Shanghai is still 30 September in UTC: the local date decides
    eng = _engine(tmp_path, datetime(2026, 10, 1, 0, 30, tzinfo=TZ))
    assert eng.handle(_offpeak_rider(1)).decision.product == "standard"   # a Thursday
    eng.calendar = _cn2026()
    out = eng.handle(_offpeak_rider(2))
    assert out.decision.product == "elderly_free"
    assert out.decision.rule_id == "elderly-offpeak-rest-day"
    assert eng.handle(_offpeak_rider(3, "370202")).decision.product == "standard"  # Qingdao
    beijing = eng.handle(_offpeak_rider(4, "110101"))
    assert (beijing.decision.product, beijing.decision.amount_cents) == ("nonlocal", 250)


def test_a_clock_behind_the_journal_is_not_trusted_until_ntp_sets_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "BUS-T")
    last = datetime(2026, 11, 25, 18, tzinfo=TZ).timestamp()   # the last record, 18:00
    wall, mono = [datetime(2001, 1, 1, tzinfo=TZ).timestamp()], [100.0]   # dead RTC
    quality = [ClockQuality.UNSYNCED]
    tb = TimeBase(wall=lambda: wall[0], mono=lambda: mono[0], quality=lambda: quality[0],
                  floor=last, anchors=journal, boot="boot-1")
    assert not tb.trusted and tb.now() == last
    # restarted in the same boot: still not trusted
    again = TimeBase(wall=lambda: wall[0], mono=lambda: mono[0], quality=lambda: quality[0],
                     floor=last, anchors=journal, boot="boot-1")
    assert not again.trusted
    eng = _engine(tmp_path / "e", datetime(2026, 11, 25, 8, tzinfo=TZ), timebase=tb)
    # the decision time says 18:00 on a working day, but nobody knows: the rider's favour
    assert eng.handle(_offpeak_rider(5)).decision.product == "elderly_free"
    wall[0], quality[0] = datetime(2026, 11, 26, 7, tzinfo=TZ).timestamp(), ClockQuality.SYNCED
    tb.now()                                          # the first synchronisation is followed
    assert tb.trusted
    assert eng.handle(_offpeak_rider(6)).decision.product == "standard"   # 07:00 Thursday
    assert TimeBase(wall=lambda: wall[0], mono=lambda: mono[0], floor=last,
                    anchors=journal, boot="boot-1").trusted
    journal.close()


def test_a_clock_just_behind_the_journal_is_still_trusted() -> None:
    tb = TimeBase(wall=lambda: 1000.0, mono=lambda: 5.0, floor=1003.0, boot="")
    assert tb.trusted and tb.now() == 1003.0


def test_ruleset_with_settings_keeps_the_region(tmp_path: Path) -> None:
    rs = load_ruleset(profile_path("bus_validator"))
    dearer = rs.with_settings({"nonlocal_fare": 300})
    now = datetime(2026, 11, 25, 12, tzinfo=TZ)
    d = dearer.evaluate(Facts(now=now, age=30, region="310104"))
    assert (d.product, d.amount_cents, d.prompt.text) == ("nonlocal", 300, "外地卡 3.00元")
    assert isinstance(dearer, RuleSet)
