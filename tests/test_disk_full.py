"""A full disk, on a real 2 MiB tmpfs: the rider sees the failsafe prompt, the heartbeat
reports it, the log has one error per change of state, nothing is corrupted, and taps
resume by themselves when space returns (agent/diskguard.py)."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from datetime import datetime
from itertools import cycle
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.config import AgentConfig
from agent.engine import Outcome
from agent.journal import Journal
from agent.store import PolicyStore
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource
from simulator.demo import seed_store
from tests.fixtures.hub import wait_until
from tests.fixtures.ordering import ProbedTerminal

FAILSAFE = "设备故障 请稍后"
START = datetime(2026, 11, 25, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (the tests run as root, as CI does)."""
    mount = tmp_path / "data"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                        str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {r.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path, leave: int) -> Path:
    """A file that takes all but ``leave`` bytes of the file system."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 16384)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.expect_log("agent.diskguard", r"disk full in .*: out of service")
def test_a_full_disk_fails_safe_and_recovers_by_itself(
        small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [START]
    cfg = AgentConfig.model_validate({
        "terminal": {"id": "BUS-FULL", "data_dir": str(small_disk), "demo": True},
        "location": {"route": "19", "vehicle": "V1"},
        "journal": {"reserve_mb": 0.25},
        "mqtt": {"enabled": False}})
    prompter = SimPrompter()
    terminal = ProbedTerminal(cfg, actuators=[prompter], clock=lambda: now[0])
    terminal.disk_check_s = 0.05
    cards = SimCardSource(terminal.pseudonymizer, population_size=40)
    terminal._sources_override = [cards]
    store = PolicyStore(cfg.store_path)
    seed_store(store, cards.population, terminal.pseudonymizer)
    store.close()
    outcomes: list[Outcome] = []
    terminal.add_listener(outcomes.append)
    terminal.start()
    riders = cycle(cards.population.tagged("standard"))
    try:
        assert terminal.disk is not None and terminal.disk.reserved
        filler = _fill(small_disk, leave=32 * 1024)
        caplog.set_level(logging.INFO)
        for n in range(1, 5000):
            now[0] += 61
            cards.tap(next(riders))
            wait_until(lambda n=n: len(outcomes) >= n, 10, "a decision")  # type: ignore[misc]
            if terminal.engine is not None and terminal.engine.out_of_service:
                break
        assert terminal.engine is not None and terminal.engine.out_of_service == "disk_full"
        decided = len([o for o in outcomes if o.record is not None])
        # out of service: every tap is told, nothing is decided or opened
        for _ in range(3):
            now[0] += 61
            cards.tap(next(riders))
        wait_until(lambda: len(outcomes) >= decided + 3, 10, "three more taps")
        assert prompter.history[-1].text == FAILSAFE
        assert terminal.probe.failsafes[-3:] == [(SimPrompter.name, FAILSAFE)] * 3
        assert terminal.probe.violations() == []
        status = terminal.status()
        assert {"out_of_service", "disk_low"} <= set(status["alarms"])
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # one per state change
        journal = terminal.journal
        assert journal is not None and journal.verify() == []
        events = [r.body["event"] for r in journal.records(0, 100_000) if "event" in r.body]
        assert "out_of_service" in events
        # space returns: taps resume by themselves
        filler.unlink()
        wait_until(lambda: not terminal.engine.out_of_service, 10,  # type: ignore[union-attr]
                   "back in service")
        assert terminal.disk.reserved and "out_of_service" not in terminal.status()["alarms"]
        before = len(outcomes)
        now[0] += 61
        cards.tap(next(riders))
        wait_until(lambda: len(outcomes) > before, 10, "a decision after recovery")
        assert outcomes[-1].record is not None and outcomes[-1].decision.accepted
    finally:
        terminal.stop()
    j = Journal(cfg.journal_path, "BUS-FULL")
    try:
        assert j.verify() == []
        events = [r.body["event"] for r in j.records(0, 100_000) if "event" in r.body]
        assert events[-2:] == ["out_of_service", "in_service"] or \
            events[events.index("out_of_service"):][-1] == "in_service"
    finally:
        j.close()
