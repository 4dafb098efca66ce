"""The journal's WAL checkpoints run between taps, in the background (decision 44): never
while a tap is being decided, the WAL stays bounded when taps never stop, and a writer
killed while checkpoints run loses no committed record; ``[journal] dir`` puts the journal
(and the disk guard's reserve) on a file system of its own (decision 45)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import agent.journal
from agent.config import load_config
from agent.daemon import Terminal
from agent.diskguard import DiskGuard
from agent.journal import Journal
from agent.journal_checkpoint import EVERY_COMMITS
from agent.model import Presentation
from agent.policy.schedule import MaintenanceSchedule
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource


def _checkpointed_records(path: Path, tmp: Path) -> int:
    """Records in the main database file alone (what checkpoints have copied there)."""
    copy = tmp / "main-only.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name='records'").fetchone() is None:
            return 0                   # not even the schema has been checkpointed
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])
    finally:
        db.close()


def test_no_checkpoint_starts_while_a_tap_is_being_decided(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db", "T-CP", background_checkpoint=True)
    cp = j.checkpointer
    assert cp is not None
    try:
        cp.tap_started()
        for i in range(cp.every + 1):
            j.append({"event": "tap", "n": i})
        assert cp.wait_held(1), "the checkpointer never saw a checkpoint due"
        assert cp.runs == 0, "a checkpoint ran while a tap was being decided"
        assert _checkpointed_records(j.path, tmp_path) == 0, \
            "the commits checkpointed the WAL themselves"
        cp.tap_done()
        assert cp.wait_runs(1), "no checkpoint after the tap was decided"
        j.append({"event": "tap", "n": -1})     # one commit: checkpointed once quiet
        assert cp.wait_runs(2)
        assert _checkpointed_records(j.path, tmp_path) == cp.every + 2
    finally:
        j.close()
    reopened = Journal(tmp_path / "journal.db", "T-CP")
    assert reopened.last_seq == EVERY_COMMITS + 2 and reopened.verify() == []
    reopened.close()


def test_the_wal_stays_bounded_when_taps_never_stop(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.journal, "HARD_LIMIT_PAGES", 32)
    j = Journal(tmp_path / "journal.db", "T-CP", background_checkpoint=True)
    cp = j.checkpointer
    assert cp is not None
    wal = Path(f"{j.path}-wal")
    sizes = []
    try:
        cp.tap_started()                          # a tap always in flight
        for i in range(150):
            j.append({"event": "tap", "pad": "x" * 3000, "n": i})   # a page or more each
            sizes.append(wal.stat().st_size)
        assert cp.runs == 0
    finally:
        cp.tap_done()
        j.close()
    frame = 4096 + 24
    assert max(sizes) <= 32 * frame + 8 * frame, f"the WAL grew to {max(sizes)} bytes"
    assert _checkpointed_records(tmp_path / "journal.db", tmp_path) > 0


_WRITER = """
import sys
from agent.journal import Journal
j = Journal(sys.argv[1], "T-CRASH", background_checkpoint=True)
i = 0
while True:
    r = j.append({"event": "tap", "pad": "y" * 1500, "n": i})
    i += 1
    print(r.seq, j.checkpointer.runs, flush=True)
"""


def test_a_writer_killed_while_checkpoints_run_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    for rounds in (5, 10):            # twice: the second kill lands on a reopened file
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        assert proc.stdout is not None
        durable = runs = 0
        for line in proc.stdout:       # bounded: the writer appends until killed
            durable, runs = (int(x) for x in line.split())
            if runs >= rounds:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        assert runs >= rounds, "the writer stopped before its checkpoints ran"
        j = Journal(path, "T-CRASH")
        try:
            assert j.last_seq >= durable, "a record reported durable was lost"
            assert j.verify() == []
        finally:
            j.close()


def _sim_terminal(tmp_path: Path, tid: str, extra: str = "") -> tuple[Terminal, SimCardSource]:
    """A started demo terminal (no MQTT) whose taps come from the returned sim cards."""
    cfg_path = tmp_path / "terminal.toml"
    cfg_path.write_text(
        f'[terminal]\nid = "{tid}"\ndata_dir = "{tmp_path / "data"}"\ndemo = true\n{extra}'
        '[cards]\nbackend = "sim"\noptions = { rate_per_min = 0, population_size = 5 }\n'
        "[mqtt]\nenabled = false\n")
    terminal = Terminal(load_config(cfg_path), actuators=[SimPrompter()])
    cards = SimCardSource(terminal.pseudonymizer, population_size=5)
    terminal._sources_override = [cards]
    terminal.start()
    return terminal, cards


def test_the_daemon_journals_on_its_own_file_system_and_checkpoints_between_taps(
        tmp_path: Path) -> None:
    terminal, cards = _sim_terminal(
        tmp_path, "BUS-JFS", f'[journal]\ndir = "{tmp_path / "journal-fs"}"\n')
    try:
        for holder in cards.population.holders[:3]:
            cards.tap(holder)
        assert terminal.drain(10)
        assert terminal.journal is not None and terminal.journal.checkpointer is not None
        # every tap reported done: the checkpointer is not held by a tap that never ended
        assert terminal.journal.checkpointer.wait_runs(1), "no checkpoint after the taps"
        assert not terminal.journal.checkpointer.busy
        seq = terminal.journal.last_seq
    finally:
        terminal.stop()
    assert seq >= 3
    assert (tmp_path / "journal-fs" / "journal.db").exists()
    assert not (tmp_path / "data" / "journal.db").exists()
    assert (tmp_path / "journal-fs" / DiskGuard.RESERVE_FILE).exists()


@pytest.mark.expect_log("agent.daemon", r"worker failed")
def test_a_failed_decision_releases_the_policy_children_and_the_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hook marks a tap in flight for the schedule and the checkpointer, and one ends
    it — also when the decision raised: a presentation left counted would hold a delta
    child after every later tap (the schedule's count once leaked this way)."""
    terminal, cards = _sim_terminal(tmp_path, "BUS-REL")
    schedule = MaintenanceSchedule()
    terminal.applier = SimpleNamespace(schedule=schedule, close=lambda: None)
    try:
        assert terminal.engine is not None
        handle = terminal.engine.handle
        calls = []

        def fails_once(p: Presentation) -> object:
            calls.append(p)
            if len(calls) == 1:
                raise RuntimeError("decision failed")
            return handle(p)

        monkeypatch.setattr(terminal.engine, "handle", fails_once)
        holders = cards.population.holders
        cards.tap(holders[0])                     # its decision raises
        cards.tap(holders[1])                     # decided and journaled
        assert terminal.drain(10) and len(calls) == 2
        assert schedule.in_flight == 0, "a tap whose decision failed is still counted"
        assert terminal.journal is not None and terminal.journal.checkpointer is not None
        assert not terminal.journal.checkpointer.busy
        assert not terminal.gc.busy, "a full garbage collection stays held by a failed tap"
    finally:
        terminal.stop()
