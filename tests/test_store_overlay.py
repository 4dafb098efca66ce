"""Deltas go to the store's overlay; compaction merges it without changing a decision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from agent.policy.compaction import Compactor
from agent.policy.stage import WritebackPacer
from agent.store import PolicyInfo, PolicyStore

DAY = date(2026, 11, 25)
HOLDERS = ("h1", "h2", "h3", "h4", "h5")
CARDS = ("k1", "k2", "k3")


def view(store: PolicyStore) -> tuple[dict[str, frozenset[str]], dict[str, str | None]]:
    """What taps would see: each holder's entitlements today, each card's hotlist reason."""
    return ({h: store.entitlements(h, DAY) for h in HOLDERS},
            {k: store.hotlisted(k) for k in CARDS})


def seeded(path: Path) -> PolicyStore:
    store = PolicyStore(path)
    store.apply(replace=True, info=PolicyInfo("c/1", 1, "h1"),
                entitlements=[("h1", "elderly", "", ""), ("h2", "student", "", ""),
                              ("h5", "disabled", "", "")],
                hotlist=[("k1", "card", "lost", ""), ("k3", "holder", "stolen", "")])
    return store


def delta(store: PolicyStore) -> None:
    store.apply(info=PolicyInfo("c/1", 2, "h2"),
                remove_entitlements=[("h1", "elderly"), ("h9", "student")],
                entitlements=[("h3", "disabled", "", ""), ("h2", "ticket:taishan", "", ""),
                              ("h4", "elderly", "", "2026-11-24"),       # expired yesterday
                              ("h5", "disabled", "2026-12-01", "")],     # replaced: not yet
                remove_hotlist=["k1"], hotlist=[("k2", "card", "lost", "")])


EXPECTED = ({"h1": frozenset(), "h2": frozenset({"student", "ticket:taishan"}),
             "h3": frozenset({"disabled"}), "h4": frozenset(), "h5": frozenset()},
            {"k1": None, "k2": "lost", "k3": "stolen"})


def test_delta_lands_in_the_overlay_and_overrides_the_big_tables(tmp_path: Path) -> None:
    store = seeded(tmp_path / "store.db")
    try:
        delta(store)
        assert view(store) == EXPECTED
        assert store.overlay_rows() == 8
        # as the taps see it: h2 ×2, h3, h4 (expired but present), h5 (future) ; k2, k3
        assert store.counts() == {"entitlements": 5, "hotlist": 2}
    finally:
        store.close()


def test_compaction_in_batches_never_changes_a_decision(tmp_path: Path) -> None:
    store = seeded(tmp_path / "store.db")
    delta(store)
    seen = []

    def check(n: int) -> None:          # a reader opened between two batches
        other = PolicyStore(tmp_path / "store.db")
        try:
            seen.append((n, view(other) == EXPECTED, other.counts()))
        finally:
            other.close()

    try:
        assert store.compact(batch_rows=3, pause_s=0, after_batch=check) == 8
        assert [n for n, _, _ in seen] == [3, 6, 8]
        assert all(same for _, same, _ in seen)
        assert all(c == {"entitlements": 5, "hotlist": 2} for _, _, c in seen)
        assert store.refresh() is False          # identity unchanged ...
        assert store.overlay_rows() == 0 and view(store) == EXPECTED    # ... and decisions
        assert store.compact(pause_s=0) == 0
    finally:
        store.close()


def test_interrupted_compaction_resumes_and_a_killed_one_loses_nothing(tmp_path: Path) -> None:
    store = seeded(tmp_path / "store.db")
    delta(store)
    try:
        batches = []
        assert store.compact(batch_rows=2, pause_s=0, after_batch=batches.append,
                             stop=lambda: len(batches) >= 2) == 4
        store.refresh()
        assert store.overlay_rows() == 4 and view(store) == EXPECTED
        # more rows, so that the background merge process is killed mid-way
        store.apply(entitlements=[(f"x{i:06d}", "student", "", "") for i in range(1_500)])
        proc = subprocess.Popen([sys.executable, "-m", "agent.policy.stage", "--compact",
                                 str(tmp_path / "store.db")], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert '"compacted"' in first
        proc.kill()
        proc.wait()
        proc.stdout.close()
        store.refresh()
        assert view(store) == EXPECTED and 0 < store.overlay_rows() < 1_504
        assert store.counts()["entitlements"] == 5 + 1_500    # nothing lost
        out = subprocess.run([sys.executable, "-m", "agent.policy.stage", "--compact",
                              str(tmp_path / "store.db")], capture_output=True, text=True,
                             check=True).stdout
        assert out.strip().splitlines()[-1].startswith('{"ok": true')
        store.refresh()
        assert store.overlay_rows() == 0 and view(store) == EXPECTED
    finally:
        store.close()


def test_a_snapshot_clears_the_overlay(tmp_path: Path) -> None:
    store = seeded(tmp_path / "store.db")
    try:
        delta(store)
        store.apply(replace=True, info=PolicyInfo("c/1", 3, "h3"),
                    entitlements=[("h4", "student", "", "")], hotlist=[])
        assert store.overlay_rows() == 0
        assert view(store) == ({h: frozenset({"student"} if h == "h4" else ())
                                for h in HOLDERS}, dict.fromkeys(CARDS))
    finally:
        store.close()


def test_writeback_pacer_follows_files_that_appear_and_closes_them(tmp_path: Path) -> None:
    later = tmp_path / "later.db"
    fds_before = len(os.listdir("/proc/self/fd"))
    looks = threading.Semaphore(0)

    def paths() -> list[Path]:
        looks.release()                  # one more pass of the pacer's loop begins
        return [later]

    with WritebackPacer(paths, period_s=0.001) as pacer:
        assert looks.acquire(timeout=10) and looks.acquire(timeout=10)
        assert len(os.listdir("/proc/self/fd")) == fds_before    # not there: looked again
        later.write_bytes(b"x" * 65536)
        for _ in range(3):       # the pass that saw the file has ended when the next begins
            assert looks.acquire(timeout=10)
        assert len(os.listdir("/proc/self/fd")) == fds_before + 1   # opened once, kept
    assert pacer._thread is not None and not pacer._thread.is_alive()
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_agent_status_reports_unmerged_delta_rows(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    conf = tmp_path / "terminal.toml"
    conf.write_text(f'[terminal]\nid = "BUS-S1"\ndata_dir = "{tmp_path / "data"}"\n'
                    'demo = true\n', encoding="utf-8")
    store = seeded(tmp_path / "data" / "store.db")
    delta(store)
    store.close()
    assert main(["agent", "status", "--config", str(conf), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["policy"] == "c/1@2" and status["unmerged"] == 8
    assert (status["entitlements"], status["hotlist"]) == (5, 2)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _big_overlay(path: Path, rows: int) -> PolicyStore:
    store = seeded(path)
    store.apply(info=PolicyInfo("c/1", 2, "h2"),
                entitlements=[(f"x{i:08d}", "student", "", "") for i in range(rows)])
    return store


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_stopped(pid: int) -> None:
    """Wait (at most 10 s) until the kernel reports ``pid`` stopped (state ``T``)."""
    deadline = time.monotonic() + 10
    while _proc_state(pid) != "T":
        assert time.monotonic() < deadline, "the merge child was never stopped"
        time.sleep(0.01)


def test_the_merge_waits_while_taps_come_and_resumes_when_quiet(tmp_path: Path) -> None:
    store = _big_overlay(tmp_path / "store.db", 20_000)    # 40 batches
    clock = ManualClock()
    merge = Compactor(store, quiet_s=1.0, clock=clock)
    try:
        assert merge.start()
        assert merge.wait_for(lambda c: c.batches >= 1, 30)   # it merges while quiet
        merge.activity()                                      # a tap
        assert merge.wait_for(lambda c: c.pauses == 1, 10) and merge.paused
        assert merge.pid is not None
        _wait_stopped(merge.pid)                              # stopped, not merging
        rows = store.overlay_rows()
        seen = merge.counters()
        # the resumer looks three more times and finds the terminal not yet quiet
        assert merge.wait_for(lambda c: c.quiet_checks >= seen.quiet_checks + 3, 10)
        assert merge.counters().resumes == 0 and merge.paused
        assert _proc_state(merge.pid) == "T" and store.overlay_rows() == rows
        assert 0 < rows < 20_000
        clock.now += 1.0                                      # quiet for quiet_s
        assert merge.wait_for(lambda c: c.resumes == 1, 10)
        assert merge.wait_for(lambda c: c.finished == 1, 60) and merge.join(10)
        assert not merge.paused and merge.counters().pauses == 1
        assert merge.merged == 20_000 and store.overlay_rows() == 0
        assert store.entitlements("x00001234", DAY) == frozenset({"student"})
    finally:
        merge.stop()
        store.close()


def test_a_paused_merge_stops_at_once(tmp_path: Path) -> None:
    store = _big_overlay(tmp_path / "store.db", 20_000)
    merge = Compactor(store, quiet_s=1.0, clock=ManualClock())
    try:
        merge.activity()                    # taps just came: the merge starts paused
        assert merge.start() and merge.paused
        assert merge._proc is not None
        proc = merge._proc
        _wait_stopped(proc.pid)
        merge.stop(timeout_s=30)
        # ended by the SIGTERM (with the SIGCONT it needs to act on it), not by the
        # SIGKILL that follows a timeout
        assert proc.returncode == -signal.SIGTERM
        assert not merge.running and merge.counters().resumes == 0
        assert merge.counters().batches == 0
        store.refresh()
        assert store.overlay_rows() == 20_000      # nothing merged, nothing lost
        assert store.counts()["entitlements"] == 20_003
    finally:
        store.close()
