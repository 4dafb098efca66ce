"""The holiday calendar travels as a policy part: a running terminal decides a working-day
rule by the calendar of the bundle in force, a changed calendar changes its decisions, and
a restarted terminal keeps the calendar it last applied."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest

from profiles import PROFILE_DIR
from simulator.broker import Mosquitto
from simulator.population import CardHolder
from sync.hub.policy import BundleSources
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import TZ, PolicyEnv
from tests.policy_daemon import PolicyDaemon, publish_envelope

NATIONAL_DAY = datetime(2026, 10, 1, 8, 0, tzinfo=TZ)     # a Thursday, 08:00 (peak)


def _sources(env: PolicyEnv, riders: list[CardHolder], calendar: Path | None) -> BundleSources:
    """The population's data, the bus rules, the riders entitled to 老年优待 (60–64, free
    off-peak on working days, all day otherwise) and ``calendar``."""
    sources = env.population_sources()
    ents = [{"ssn": h.ssn, "name": c} for h in env.pop for c in h.categories]
    ents += [{"ssn": h.ssn, "name": "elderly_offpeak"} for h in riders]
    sources.entitlements = env.source("entitlements", ents)
    sources.calendar = calendar
    return sources


def _publish(env: PolicyEnv, broker: Mosquitto, daemon: PolicyDaemon, sources: BundleSources
             ) -> None:
    res = env.build(sources)
    publish_envelope(broker, env.repo.latest_envelope())
    daemon.wait_version(res.version)


def test_a_calendar_part_changes_working_day_decisions_on_a_running_terminal(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    env = policy_env
    env.clock.t = NATIONAL_DAY.timestamp()
    # Zibo cards (or Jinan's, recognised as local) without other concessions
    riders = iter([h for h in env.pop.tagged("standard") if not h.categories
                   and h.region[:4] in ("3703", "3701")])
    no_national_day = tmp_path / "no-national-day.toml"
    no_national_day.write_text('name = "test-2026"\nyears = [2026]\n[[holiday]]\n'
                               'name = "元旦"\nfrom = 2026-01-01\nto = 2026-01-03\n',
                               encoding="utf-8")
    first = [next(riders) for _ in range(4)]
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        with caplog.at_level(logging.WARNING, "agent.policy.calendar_part"):
            _publish(env, broker, daemon, _sources(env, first, None))
        assert "no calendar part is in force" in caplog.text
        assert daemon.status()["policy_warnings"] == ["calendar_missing"]  # the fleet sees it
        # no calendar: the weekday rule; a Thursday at 08:00 is a working day's peak
        d = daemon.tap(first[0]).decision
        assert (d.product, d.amount_cents) == ("standard", 200)

        _publish(env, broker, daemon, _sources(env, first, PROFILE_DIR / "calendars" /
                                               "cn-2026.toml"))
        out = daemon.tap(first[1])
        assert out.decision.product == "elderly_free", out.decision
        assert daemon.status()["policy_warnings"] == []
        assert out.decision.rule_id == "elderly-offpeak-rest-day"
        assert out.record is not None and out.record.body["policy"].endswith("@2")
    finally:
        daemon.stop()
    # restarted: the stored calendar decides before any new bundle arrives
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        daemon.wait_version(2)
        assert daemon.tap(first[2]).decision.product == "elderly_free"
        # a corrected calendar without National Day: the same kind of tap pays again
        _publish(env, broker, daemon, _sources(env, first, no_national_day))
        d = daemon.tap(first[3]).decision
        assert (d.product, d.rule_id) == ("standard", "standard-fare")
    finally:
        daemon.stop()


def test_the_hub_refuses_a_contradictory_calendar(policy_env: PolicyEnv, tmp_path: Path
                                                  ) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nyears = [2026]\n[[holiday]]\nname = "国庆节"\n'
                   "from = 2026-10-01\nto = 2026-10-07\nworkdays = [2026-10-09]\n",
                   encoding="utf-8")
    sources = policy_env.population_sources()
    sources.calendar = bad
    with pytest.raises(ValueError, match="2026-10-09 is a Friday"):
        policy_env.build(sources)
    assert policy_env.repo.version == 0            # nothing was built


def test_a_terminal_refuses_a_signed_bundle_whose_calendar_does_not_parse(
        policy_env: PolicyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that skipped the checks (or a bug) signs a broken calendar: the terminal
    refuses the whole bundle as malformed and keeps the calendar in force."""
    import sync.hub.policy as hub_policy
    from agent.policy.errors import BundleRefused, Refusal

    env = policy_env
    t = env.terminal()
    sources = env.population_sources()
    sources.calendar = PROFILE_DIR / "calendars" / "cn-2026.toml"
    env.build(sources)
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.calendar is not None
    t.engine.calendar = applied.calendar
    monkeypatch.setattr(hub_policy, "calendar_parts", lambda source, file_part: {
        "calendar": file_part("calendar", "calendar", b'{"type":"ykt-calendar","v":1,'
                              b'"name":"x","years":[2026],"workdays":["2026-10-09"]}')})
    env.build(_with_calendar(env))
    with pytest.raises(BundleRefused) as err:
        t.applier.offer(env.repo.latest_envelope(), None)
    assert err.value.refusal is Refusal.MALFORMED and "Friday" in str(err.value)
    assert t.store.info.version == 1 and t.engine.calendar is applied.calendar


def _with_calendar(env: PolicyEnv) -> BundleSources:
    sources = env.population_sources()
    sources.calendar = PROFILE_DIR / "calendars" / "cn-2026.toml"
    return sources


def test_a_calendar_of_other_years_is_a_policy_warning(policy_env: PolicyEnv, broker: Mosquitto,
                                                   tmp_path: Path) -> None:
    """On 1 January 2027 the 2026 calendar knows no date of the year: ``calendar_outdated``
    among the status's policy warnings (and so at the hub) until a calendar for 2027
    arrives."""
    env = policy_env
    env.clock.t = datetime(2027, 1, 1, 8, 0, tzinfo=TZ).timestamp()
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        _publish(env, broker, daemon, _sources(env, [], PROFILE_DIR / "calendars" /
                                               "cn-2026.toml"))
        # the store holds the version before the listeners ran: wait for the engine's side
        wait_until(lambda: daemon.status()["policy_warnings"] == ["calendar_outdated"], 10,
                   "calendar_outdated")
        y2027 = tmp_path / "cn-2027.toml"
        y2027.write_text('name = "test-2027"\nyears = [2027]\n[[holiday]]\nname = "元旦"\n'
                         'from = 2027-01-01\nto = 2027-01-03\n', encoding="utf-8")
        _publish(env, broker, daemon, _sources(env, [], y2027))
        wait_until(lambda: daemon.status()["policy_warnings"] == [], 10, "no warning")
    finally:
        daemon.stop()
