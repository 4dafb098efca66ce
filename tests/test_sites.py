"""Sites (docs/sites.md): two real daemons sharing a site, with the hub out of reach.

Two museum gates share a slot's capacity through per-gate quotas from the ``site`` policy
part and never admit more than the slot holds, also while cut off and across a restart;
two hall kiosks interleave one queue number space and never issue the same number on the
same (deployment-timezone) day; reservations (预约) arrive as a policy part of hashed
holder keys and are checked at the gate. Every terminal is a real :class:`Terminal`
following the policy channel over a real Mosquitto; the bundles are built by the hub's
``PolicyRepo`` with the parts of :mod:`sync.hub.site_parts`.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.model import Reason
from agent.site import parse_reservations, parse_site
from drivers.sim_cards import SimCardSource
from profiles import profile_path
from simulator.broker import Mosquitto
from simulator.population import CardHolder
from sync.hub.policy import BundleSources, SourceError
from sync.hub.site_parts import last_site_part, reservations_part, site_part, site_parts
from sync.link import MqttSettings
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, PSEUDO, TZ, PolicyEnv

CAPACITY = 5


class SiteTerminal:
    """A started :class:`Terminal` of ``profile`` in site ``site`` following the channel."""

    def __init__(self, env: PolicyEnv, broker: Mosquitto, data: Path, tid: str,
                 profile: str, site: str) -> None:
        cfg = AgentConfig.model_validate({
            "terminal": {"id": tid, "profile": profile, "data_dir": str(data), "demo": True},
            "location": {"site": site, "gate": tid},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                     "reconnect_max_s": 0.5},
            "policy": {"enabled": True, "channel": CHANNEL,
                       "anchor_file": str(env.repo.roots_dir / "1.json")},
        })
        self.terminal = Terminal(cfg, clock=env.clock)
        self.terminal.pseudonymizer = PSEUDO
        self.cards = SimCardSource(PSEUDO, population=env.pop)
        self.terminal._sources_override = [self.cards]
        self.outcomes: list[Outcome] = []
        self.terminal.add_listener(self.outcomes.append)
        self.terminal.start()

    def tap(self, holder: CardHolder) -> Outcome:
        n = len(self.outcomes)
        self.cards.tap(holder)
        assert self.terminal.drain(10), "the tap was not decided"
        return self.outcomes[n]

    def wait_version(self, version: int) -> None:
        store = self.terminal.store
        assert store is not None
        wait_until(lambda: store.info.version == version, 30, f"policy v{version}")

    def stop(self) -> None:
        self.terminal.stop()


def _museum_rules(tmp: Path) -> Path:
    """The shipped museum profile with a slot capacity of CAPACITY (vectors to match)."""
    text = profile_path("museum_gate").read_text(encoding="utf-8")
    text = (text.replace("slot_capacity = 300", f"slot_capacity = {CAPACITY}")
            .replace("visitors = 300", f"visitors = {CAPACITY}")
            .replace("visitors = 299", f"visitors = {CAPACITY - 1}"))
    path = tmp / "museum_gate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _site_file(tmp: Path, name: str, terminals: list[str], weights: dict[str, int]) -> Path:
    path = tmp / f"site-{name}-{len(list(tmp.glob('site-*')))}.toml"
    lines = [f'[[site]]\nsite = "{name}"\nterminals = {json.dumps(terminals)}',
             "weights = { " + ", ".join(f'"{k}" = {v}' for k, v in weights.items()) + " }"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _visitors(env: PolicyEnv) -> list[CardHolder]:
    today = date(2026, 11, 25)
    return [h for h in env.pop if not h.hotlisted and h.expires > today]


def _at(env: PolicyEnv, hour: int, minute: int = 0, day: int = 25) -> None:
    env.clock.t = datetime(2026, 11, day, hour, minute, tzinfo=TZ).timestamp()


def test_two_gates_never_admit_more_than_the_slot_while_cut_off(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path) -> None:
    env = policy_env
    site = _site_file(tmp_path, "museum-1", ["GATE-1", "GATE-2"], {"GATE-1": 3, "GATE-2": 2})
    env.build(BundleSources(entitlements=env.source("e", []), hotlist=env.source("h", []),
                            rules=[_museum_rules(tmp_path)],
                            parts={"site": site_part(site)}))
    gates = [SiteTerminal(env, broker, tmp_path / g, g, "museum_gate", "museum-1")
             for g in ("GATE-1", "GATE-2")]
    try:
        env.repo.publish(MqttSettings(host=broker.host, port=broker.port))
        for g in gates:
            g.wait_version(1)
        broker.stop()                      # cut off from the hub (and from each other)
        _at(env, 10, 5)
        visitors = _visitors(env)
        assert len(visitors) >= 16
        outcomes = [gates[i % 2].tap(v) for i, v in enumerate(visitors[:16])]
        admitted = [o for o in outcomes if o.decision.accepted]
        assert len(admitted) == CAPACITY      # both quotas used, never more than the slot
        per_gate = [sum(o.decision.accepted for o in g.outcomes) for g in gates]
        assert per_gate == [3, 2]
        full = [o for o in outcomes if not o.decision.accepted]
        assert {o.decision.reason for o in full} == {Reason.CAPACITY_FULL}
        assert full[0].record is not None and full[0].record.body["rule"] == "slot-full"
        # a restart (still cut off) counts the slot from its journal: nothing more enters
        gates[0].stop()
        gates[0] = SiteTerminal(env, broker, tmp_path / "GATE-1", "GATE-1", "museum_gate",
                                "museum-1")
        assert gates[0].tap(visitors[16]).decision.reason is Reason.CAPACITY_FULL
        # the next slot has its own quotas
        _at(env, 11, 5)
        assert gates[1].tap(visitors[17]).decision.accepted
    finally:
        for g in gates:
            g.stop()


def test_a_re_split_while_a_gate_is_cut_off_never_oversells(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path) -> None:
    """Weights 3:2 become 1:4 while GATE-1 (its quota of 3 used) is cut off and never
    hears of it: GATE-2 keeps min(2, 4) until the change is settled, so the slot holds."""
    env = policy_env
    rules = _museum_rules(tmp_path)
    settings = MqttSettings(host=broker.host, port=broker.port)
    first = _site_file(tmp_path, "museum-1", ["GATE-1", "GATE-2"], {"GATE-1": 3, "GATE-2": 2})
    env.build(BundleSources(entitlements=env.source("e", []), hotlist=env.source("h", []),
                            rules=[rules], parts=site_parts(first, None, PSEUDO, repo=env.repo)))
    gates = [SiteTerminal(env, broker, tmp_path / g, g, "museum_gate", "museum-1")
             for g in ("GATE-1", "GATE-2")]
    try:
        env.repo.publish(settings)
        for g in gates:
            g.wait_version(1)
        _at(env, 10, 5)
        visitors = _visitors(env)
        assert [gates[0].tap(v).decision.accepted for v in visitors[:4]] == [True] * 3 + [False]
        gates[0].stop()                    # cut off: it will never see the re-split
        env.clock.t += 60
        second = _site_file(tmp_path, "museum-1", ["GATE-1", "GATE-2"],
                            {"GATE-1": 1, "GATE-2": 4})
        env.build(BundleSources(parts=site_parts(second, None, PSEUDO, repo=env.repo)))
        part = json.loads(last_site_part(env.repo) or b"")
        assert part["sites"][0]["previous"] == {"GATE-1": 3, "GATE-2": 2}
        with pytest.raises(SourceError, match="not settled"):
            site_parts(first, None, PSEUDO, repo=env.repo)
        env.repo.publish(settings)
        gates[1].wait_version(2)
        admitted = sum(gates[1].tap(v).decision.accepted for v in visitors[4:10])
        assert admitted == 2               # 3 + 2 = the slot; 4 would have oversold
        # settled (every gate applied it): the new weights alone, from the next build on
        settled = json.loads(site_part(None, last_site_part(env.repo), settled=True))
        assert "previous" not in settled["sites"][0]
    finally:
        for g in gates:
            g.stop()


def test_a_gate_missing_from_its_sites_layout_admits_nobody_into_a_limited_slot(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path) -> None:
    env = policy_env
    site = _site_file(tmp_path, "museum-1", ["GATE-1"], {})
    env.build(BundleSources(entitlements=env.source("e", []), hotlist=env.source("h", []),
                            rules=[_museum_rules(tmp_path)], parts={"site": site_part(site)}))
    gate = SiteTerminal(env, broker, tmp_path / "g9", "GATE-9", "museum_gate", "museum-1")
    try:
        env.repo.publish(MqttSettings(host=broker.host, port=broker.port))
        gate.wait_version(1)
        _at(env, 10)
        assert gate.tap(_visitors(env)[0]).decision.reason is Reason.CAPACITY_FULL
    finally:
        gate.stop()


def test_two_kiosks_never_issue_the_same_number_on_the_same_day(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path) -> None:
    env = policy_env
    site = _site_file(tmp_path, "hall-1", ["KIOSK-1", "KIOSK-2"], {})
    env.build(BundleSources(entitlements=env.source("e", []), hotlist=env.source("h", []),
                            rules=[profile_path("service_kiosk")],
                            parts={"site": site_part(site)}))
    kiosks = [SiteTerminal(env, broker, tmp_path / k, k, "service_kiosk", "hall-1")
              for k in ("KIOSK-1", "KIOSK-2")]
    try:
        env.repo.publish(MqttSettings(host=broker.host, port=broker.port))
        for k in kiosks:
            k.wait_version(1)
        broker.stop()
        _at(env, 9)
        visitors = _visitors(env)
        issued: list[str] = []

        def ticket(k: int, v: CardHolder) -> str:
            out = kiosks[k].tap(v)
            assert out.decision.accepted and out.record is not None
            number: str = out.record.body["queue_no"]
            issued.append(number)
            return number

        # uneven load: kiosk 1 issues three for each one of kiosk 2
        for i, v in enumerate(visitors[:12]):
            ticket(1 if i % 4 == 3 else 0, v)
        assert issued[:4] == ["A001", "A003", "A005", "A002"]
        # a restart continues from the journal, in its own number space
        kiosks[0].stop()
        kiosks[0] = SiteTerminal(env, broker, tmp_path / "KIOSK-1", "KIOSK-1",
                                 "service_kiosk", "hall-1")
        for v in visitors[12:16]:
            ticket(0, v)
        assert len(set(issued)) == len(issued), issued
        # the deployment-timezone day: 23:59 the same day, then 00:01 the next day
        env.clock.t = datetime(2026, 11, 25, 23, 59, tzinfo=TZ).timestamp()
        # (the kiosk profile has no opening hours: it issues at any time)
        same_day = ticket(1, visitors[16])
        assert same_day not in issued[:-1]
        env.clock.t += timedelta(minutes=2).total_seconds()
        assert ticket(0, visitors[17]) == "A001" and ticket(1, visitors[18]) == "A002"
    finally:
        for k in kiosks:
            k.stop()


def test_reservations_are_checked_at_the_gate(policy_env: PolicyEnv, broker: Mosquitto,
                                              tmp_path: Path) -> None:
    env = policy_env
    visitors = _visitors(env)
    slot_booker, day_booker, walk_in, late_booker = visitors[:4]
    res = env.source("res", [
        {"ssn": slot_booker.ssn, "day": "2026-11-25", "slot": "10:00"},
        {"ssn": late_booker.ssn, "day": "2026-11-25", "slot": "10:00"},
        {"ssn": day_booker.ssn, "day": "2026-11-25", "slot": ""},
        {"ssn": walk_in.ssn, "day": "2026-11-26", "slot": ""}])      # another day
    part = reservations_part(res, PSEUDO)
    assert slot_booker.ssn.encode() not in part and PSEUDO.holder_key(slot_booker.ssn) \
        in part.decode()
    env.build(BundleSources(entitlements=env.source("e", []), hotlist=env.source("h", []),
                            rules=[profile_path("museum_gate")],
                            parts={"reservations": part}))
    gate = SiteTerminal(env, broker, tmp_path / "g", "GATE-1", "museum_gate", "museum-1")
    try:
        env.repo.publish(MqttSettings(host=broker.host, port=broker.port))
        gate.wait_version(1)
        _at(env, 10, 30)
        assert gate.tap(slot_booker).decision.accepted
        assert gate.tap(day_booker).decision.accepted
        refused = gate.tap(walk_in)
        assert refused.decision.reason is Reason.NO_RESERVATION
        assert refused.decision.prompt.text == "未预约 请先预约"
        assert refused.record is not None and refused.record.body["rule"] == "no-reservation"
        assert walk_in.ssn not in json.dumps(refused.record.body, ensure_ascii=False)
        _at(env, 11, 30)                  # past the 10:00 slot: that booking is spent
        assert gate.tap(late_booker).decision.reason is Reason.NO_RESERVATION
    finally:
        gate.stop()


@pytest.mark.parametrize("doc, fault", [
    ({"sites": [{"site": "a", "terminals": ["T1", "T1"]}]}, "distinct"),
    ({"sites": [{"site": "a", "terminals": ["T1"], "weights": {"T2": 1}}]}, "unlisted"),
    ({"sites": [{"site": "a", "terminals": ["T1"]}, {"site": "b", "terminals": ["T1"]}]},
     "is in a and b"),
    ({"sites": [{"site": "a", "terminals": ["T1"], "weights": {"T1": -1}}]}, "whole numbers"),
    ([1], "object"),
])
def test_a_bad_site_part_is_refused_naming_the_fault(doc: Any, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        parse_site(json.dumps(doc).encode())


def test_quotas_never_add_up_to_more_than_the_limit() -> None:
    layout = parse_site(json.dumps({"sites": [{"site": "m", "terminals": ["A", "B", "C"],
                                               "weights": {"A": 1, "B": 1, "C": 1}}]}
                                   ).encode())["A"]
    for limit in range(0, 50):
        assert sum(layout.quota(t, limit) for t in "ABC") <= limit


def test_reservation_sources_need_a_holder_and_a_real_day(policy_env: PolicyEnv) -> None:
    bad = policy_env.source("res", [{"ssn": "370302199001011232", "day": "2026-13-01"}])
    with pytest.raises(SourceError, match=r"res-\d+\.csv:2: .*day"):
        reservations_part(bad, PSEUDO)
    typo = policy_env.source("res", [{"ssn": "370302199001011234", "day": "2026-11-25"}])
    with pytest.raises(SourceError, match=r"res-\d+\.csv:2: ssn: the check digit"):
        reservations_part(typo, PSEUDO)     # checked like the entitlements' (GB 11643)
    with pytest.raises(ValueError, match="32 hex"):
        parse_reservations(b'{"reservations": [["370302199001011234", "2026-11-25", ""]]}')


def test_hub_policy_build_takes_site_and_reservations(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    repo, key = tmp_path / "repo", tmp_path / "ops.pem"
    assert main(["hub", "policy", "keygen", "--out", str(key), "--repo", str(repo),
                 "--json"]) == 0
    ents, hot = tmp_path / "e.csv", tmp_path / "h.csv"
    ents.write_text("ssn,name\n", encoding="utf-8")
    hot.write_text("card_id,reason\n", encoding="utf-8")
    site = _site_file(tmp_path, "museum-1", ["GATE-1", "GATE-2"], {})
    res = tmp_path / "res.csv"
    res.write_text("ssn,day,slot\n370302195001010012,2026-11-25,10:00\n", encoding="utf-8")
    build = ["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL, "--key",
             str(key), "--demo-key", "--entitlements", str(ents), "--hotlist", str(hot)]
    capsys.readouterr()
    assert main([*build, "--site", str(site), "--reservations", str(res), "--json"]) == 0
    parts = {p["name"]: p for p in json.loads(capsys.readouterr().out)["parts"]}
    assert parts["site"]["kind"] == "site" and parts["reservations"]["kind"] == "reservations"
    stored = (repo / "parts" / parts["reservations"]["sha256"]).read_text(encoding="utf-8")
    assert "370302195001010012" not in stored
    # a later build without them keeps both; a bad site file is refused (exit 2)
    assert main([*build, "--json"]) == 0
    later = {p["name"] for p in json.loads(capsys.readouterr().out)["parts"]}
    assert {"site", "reservations"} <= later
    grown = _site_file(tmp_path, "museum-1", ["GATE-1", "GATE-2", "GATE-3"], {})
    assert main([*build, "--site", str(grown)]) == 2   # a source mistake: exit 2
    assert "--renumber" in capsys.readouterr().err
    assert main([*build, "--site", str(grown), "--renumber"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"sites": [{"site": "m", "terminals": ["G1", "G1"]}]}', encoding="utf-8")
    assert main([*build, "--site", str(bad)]) == 2
    assert "distinct" in capsys.readouterr().err
