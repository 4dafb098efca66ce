"""The journal's WAL checkpoints run between taps, in the background (decision 44): never
while a tap is being decided, the WAL stays bounded when taps never stop, and a writer
killed while checkpoints run loses no committed record."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import agent.journal
from agent.journal import Journal


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
        for i in range(40):
            j.append({"event": "tap", "n": i})
        assert cp.wait_held(1), "the checkpointer never saw a checkpoint due"
        assert cp.runs == 0, "a checkpoint ran while a tap was being decided"
        assert _checkpointed_records(j.path, tmp_path) == 0, \
            "the commits checkpointed the WAL themselves"
        cp.tap_done()
        assert cp.wait_runs(1), "no checkpoint after the tap was decided"
        j.append({"event": "tap", "n": 40})     # idle: checkpointed after each commit
        assert cp.wait_runs(2)
        assert _checkpointed_records(j.path, tmp_path) == 41
    finally:
        j.close()
    reopened = Journal(tmp_path / "journal.db", "T-CP")
    assert reopened.last_seq == 41 and reopened.verify() == []
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
    for rounds in (30, 60):            # twice: the second kill lands on a reopened file
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
