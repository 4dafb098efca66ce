"""A tap over the profile's budget is journaled with its duration, counted in the status
heartbeat and shown by ``ykt status`` (issue 15). The slow tap is made slow by its
hardware time stamp lying in the past, not by waiting: nothing here depends on timing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.model import Presentation, PresentationKind
from agent.rules import load_ruleset
from drivers.prompt import SimPrompter
from drivers.sim_cards import credential_from_holder
from profiles import profile_path
from simulator.population import Population


def test_a_slow_tap_is_journaled_counted_and_shown(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text(f'[terminal]\nid = "BUS-SLOW"\ndemo = true\ndata_dir = "{data}"\n'
                        '[mqtt]\nenabled = false\n', encoding="utf-8")
    text = profile_path("bus_validator").read_text(encoding="utf-8")
    assert "tap_budget_ms = 300" in text
    rules = tmp_path / "bus.toml"
    rules.write_text(text.replace("tap_budget_ms = 300", "tap_budget_ms = 250"),
                     encoding="utf-8")
    terminal = Terminal(AgentConfig.model_validate({
        "terminal": {"id": "BUS-SLOW", "data_dir": str(data), "demo": True},
        "mqtt": {"enabled": False}}), actuators=[SimPrompter()], sources=[],
        ruleset=load_ruleset(rules))
    holders = Population.generate(5, seed=3).holders
    terminal.start()
    try:
        assert terminal.status()["slow_taps"] == 0
        assert terminal.status()["tap_budget_ms"] == 250
        late = time.monotonic_ns() - 400_000_000          # reported 400 ms ago
        for seen in (late, 0):                             # 0: no time stamp, not timed
            cred = credential_from_holder(holders[0 if seen else 1], terminal.pseudonymizer)
            terminal.submit(Presentation(PresentationKind.CARD, "sim:reader0", seen,
                                         credential=cred))
        assert terminal.drain(10)
        assert terminal.journal is not None
        records = terminal.journal.records(0, 10)
        decisions = [r for r in records if "event" not in r.body]
        slow = [r for r in records if r.body.get("event") == "slow_tap"]
        assert len(decisions) == 2 and len(slow) == 1
        body = slow[0].body
        assert body["tap_seq"] == decisions[0].seq and body["budget_ms"] == 250
        assert body["duration_ms"] >= 400
        st = terminal.status()
        assert st["slow_taps"] == 1 and st["longest_tap_ms"] >= 400
        assert main(["status", "--config", str(cfg_file), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["slow_taps"] == 1 and shown["tap_budget_ms"] == 250
        assert main(["status", "--config", str(cfg_file)]) == 0
        out = capsys.readouterr().out
        assert "slow_taps: 1" in out and "tap_budget_ms: 250" in out
    finally:
        terminal.stop()


def test_every_shipped_profile_has_a_tap_budget() -> None:
    for name in ("bus_validator", "scenic_gate", "museum_gate", "service_kiosk"):
        rs = load_ruleset(profile_path(name))
        assert f"tap_budget_ms = {rs.profile.tap_budget_ms}" in profile_path(name).read_text(
            encoding="utf-8")
