"""Rule files: validation errors name file, line and key; vectors gate activation."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.rules import Facts, RuleSetError, age_on, load_ruleset
from agent.tomlconf import ConfigFileError, key_lines
from profiles import PROFILE_DIR, profile_path

BUS = profile_path("bus_validator")


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_profile_loads_and_passes_its_vectors(path: Path) -> None:
    rs = load_ruleset(path)
    assert rs.spec.vector, f"{path} ships no test vectors"


def test_typo_in_a_rule_names_file_line_and_key(tmp_path: Path) -> None:
    text = BUS.read_text(encoding="utf-8").replace("repeat_within_s = \"passback_s\"", "repeat_within = 60")
    p = tmp_path / "bus.toml"
    p.write_text(text, encoding="utf-8")
    line = next(n for n, s in enumerate(text.splitlines(), 1) if "repeat_within = 60" in s)
    with pytest.raises(ConfigFileError) as err:
        load_ruleset(p)
    assert f"{p}:{line}: rule[2].when.repeat_within: Extra inputs are not permitted" in str(err.value)


def test_wrong_types_and_unknown_reasons_are_reported(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text('[profile]\nname = "x"\nkind = "bus_validator"\n\n[[rule]]\nid = "a"\n'
                 'deny = "no_such_reason"\n\n[[rule]]\nid = "b"\naccept = "accepted"\n'
                 'amount_cents = -5\n', encoding="utf-8")
    with pytest.raises(ConfigFileError) as err:
        load_ruleset(p)
    msg = str(err.value)
    assert f"{p}:7: rule[0].deny" in msg and f"{p}:12: rule[1].amount_cents" in msg


def test_no_vectors_or_a_failing_vector_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text('[profile]\nname = "x"\nkind = "bus_validator"\n[prompts]\n'
                 'accepted = { text = "请上车" }\n[[rule]]\nid = "all"\n'
                 'accept = "accepted"\n', encoding="utf-8")
    with pytest.raises(RuleSetError, match="no test vectors"):
        load_ruleset(p)
    p.write_text(p.read_text() + '[[vector]]\nname = "v"\ntime = 2026-01-01T08:00:00+08:00\n'
                 'expect_reason = "hotlisted"\n', encoding="utf-8")
    with pytest.raises(RuleSetError, match="vector 'v': reason accepted != hotlisted"):
        load_ruleset(p)


def test_first_match_and_hours() -> None:
    rs = load_ruleset(BUS)
    tz = ZoneInfo("Asia/Shanghai")
    d = rs.evaluate(Facts(now=datetime(2026, 11, 25, 8, tzinfo=tz), age=70, hotlisted=True,
                          since_last_tap_s=5))
    assert d.rule_id == "hotlisted"       # hotlist beats passback and concessions
    gate = load_ruleset(profile_path("scenic_gate"))      # open 07:00-18:00
    for hour, minute, reason in ((6, 59, "outside_hours"), (7, 0, "accepted"),
                                 (17, 59, "accepted"), (18, 0, "outside_hours")):
        at = datetime(2026, 11, 25, hour, minute, tzinfo=tz)
        assert gate.evaluate(Facts(now=at, age=70)).reason.value == reason, (hour, minute)


def test_age_on_birthdays() -> None:
    from datetime import date

    assert age_on(date(1960, 11, 26), date(2026, 11, 25)) == 65
    assert age_on(date(1960, 11, 25), date(2026, 11, 25)) == 66
    assert age_on(date(1960, 2, 29), date(2026, 2, 28)) == 65


def test_key_lines_maps_arrays_of_tables_and_inline_tables() -> None:
    lines = key_lines('[a]\nx = 1\n[[r]]\nid = "1"\n[[r]]\nwhen = { k = 1 }\n')
    assert lines[("a", "x")] == 2 and lines[("r", 1, "when")] == 6 and lines[("r", 0)] == 3


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_profile_prompts_use_known_sounds_and_voices(path: Path) -> None:
    from drivers.prompt import BEEP_PATTERNS, VOICE_CLIPS

    rs = load_ruleset(path)
    prompts = [p.build() for p in rs.spec.prompts.values()]
    prompts += [r.decision.prompt for r in rs.rules]
    for p in prompts:
        assert p.sound in BEEP_PATTERNS, f"{path.name}: unknown beep pattern {p.sound!r}"
        assert not p.voice or p.voice in VOICE_CLIPS or p.voice == "number:{queue}", \
            f"{path.name}: unknown voice {p.voice!r}"


def test_vectors_can_set_every_fact() -> None:
    from dataclasses import fields

    from agent.rules import VectorSpec

    missing = {f.name for f in fields(Facts)} - {"now"} - set(VectorSpec.model_fields)
    assert not missing, f"test vectors cannot set these facts: {missing}"


def _bus_with(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    text = BUS.read_text(encoding="utf-8")
    assert old in text, old
    text = text.replace(old, new, 1)
    p = tmp_path / "bus.toml"
    p.write_text(text, encoding="utf-8")
    return p, text


def _line_of(text: str, needle: str) -> int:
    return next(n for n, s in enumerate(text.splitlines(), 1) if needle in s)


def test_a_reason_without_a_prompt_is_refused_with_file_line_and_key(tmp_path: Path) -> None:
    p, text = _bus_with(tmp_path, 'expired = { text = "卡已过期", sound = "deny", voice = "invalid" }\n',
                        "")
    with pytest.raises(ConfigFileError) as err:
        load_ruleset(p)
    line = _line_of(text, 'deny = "expired"')
    assert (f"{p}:{line}: rule[1].deny: rule 'expired' decides 'expired' but [prompts] has "
            "no 'expired'") in str(err.value)


def test_prompts_must_fit_the_display_and_large_text(tmp_path: Path) -> None:
    p, text = _bus_with(tmp_path, 'text = "卡已过期"', 'text = "卡已过期 请到服务窗口办理换卡"')
    with pytest.raises(ConfigFileError) as err:
        load_ruleset(p)
    line = _line_of(text, "请到服务窗口办理换卡")
    assert f"{p}:{line}: prompts.expired: prompt '卡已过期 请到服务窗口办理换卡' takes 29 " \
        "columns; the display has 20" in str(err.value)
    p, text = _bus_with(tmp_path, 'short = "老年卡", ', "")      # "老年卡 免费" is 11 columns
    with pytest.raises(ConfigFileError, match="prompts.elderly_free: large text: prompt"):
        load_ruleset(p)
    p, text = _bus_with(tmp_path, 'text = "卡已过期"', 'text = "expired"')
    with pytest.raises(ConfigFileError, match="has no Chinese text"):
        load_ruleset(p)


def test_settings_are_one_source_of_truth_and_none_is_dead(tmp_path: Path) -> None:
    rs = load_ruleset(BUS)
    tz = ZoneInfo("Asia/Shanghai")
    adult = Facts(now=datetime(2026, 11, 25, 12, tzinfo=tz), age=30)
    dearer = rs.with_settings({"standard_fare": 250, "elderly_age": 66})
    d = dearer.evaluate(adult)
    assert (d.amount_cents, d.prompt.text) == (250, "普通卡 2.50元")
    assert dearer.evaluate(Facts(now=adult.now, age=65)).product == "standard"
    assert rs.evaluate(Facts(now=adult.now, age=65)).product == "elderly_free"
    # a vector rides free at 68: a city raising the age to 70 must change the vectors too
    with pytest.raises(RuleSetError, match="vector 'dynamic code holder treated like a card'"):
        rs.with_settings({"elderly_age": 70})
    with pytest.raises(RuleSetError, match="settings.no_such: the policy bundle sets"):
        rs.with_settings({"no_such": 1})
    p, text = _bus_with(tmp_path, "elderly_daily_free_rides = 4\n",
                        "elderly_daily_free_rides = 4\nholiday_fare = 0\n")
    with pytest.raises(ConfigFileError) as err:
        load_ruleset(p)
    assert (f"{p}:{_line_of(text, 'holiday_fare')}: settings.holiday_fare: setting "
            "'holiday_fare' is used by no rule or prompt") in str(err.value)
    p, text = _bus_with(tmp_path, 'amount = "standard_fare"', 'amount = "standard_far"')
    with pytest.raises(ConfigFileError) as err:
        load_ruleset(p)
    line = _line_of(text, 'amount = "standard_far"')
    assert (f"{p}:{line}: rule[8].amount: no setting "
            "'standard_far' in [settings]") in str(err.value)


def test_every_reason_has_a_chinese_prompt_that_fits() -> None:
    from agent.model import Reason
    from agent.profile_checks import DEFAULT_PROMPTS, check_prompt

    rs = load_ruleset(BUS)
    for reason in Reason:
        prompt = rs.prompt_for(reason)
        assert prompt.text != reason.value and not check_prompt(prompt, 20, ()), reason
        assert not check_prompt(DEFAULT_PROMPTS[reason], 20, ()), reason


def test_a_concession_journals_its_category_and_the_fare_it_replaces(tmp_path: Path) -> None:
    """The standard fare a concession replaced comes from the same setting the full fare
    charges (one source of truth), also when a bundle overrides it."""
    rs = load_ruleset(BUS)
    now = datetime(2026, 11, 25, 12, tzinfo=ZoneInfo("Asia/Shanghai"))
    elderly = rs.evaluate(Facts(now=now, age=70))
    assert (elderly.category, elderly.fare_std_cents, elderly.amount_cents) == ("elderly", 200, 0)
    student = rs.with_settings({"standard_fare": 250}).evaluate(
        Facts(now=now, age=16, entitlements=frozenset({"student"})))
    assert (student.category, student.fare_std_cents, student.amount_cents) == (
        "student", 250, 100)
    assert rs.evaluate(Facts(now=now, age=30)).category == ""
    p, _ = _bus_with(tmp_path, 'concession = "youfu"\nreplaces = "standard_fare"\n',
                     'concession = "youfu"\n')
    with pytest.raises(ConfigFileError, match="'concession' and 'replaces' together"):
        load_ruleset(p)
    p, _ = _bus_with(tmp_path, 'concession = "youfu"\nreplaces = "standard_fare"\n',
                        'concession = "youfu"\nreplaces = "standard_far"\n')
    with pytest.raises(ConfigFileError, match=r"rule\[4\]\.replaces: no setting .standard_far."):
        load_ruleset(p)
