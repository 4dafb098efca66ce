"""The daemon under supervision, as a real process: one daemon per data directory, the
systemd notify protocol on a socket the test owns (these machines do not run systemd as
PID 1), a watchdog fed by the decision worker's liveness and the journal's health."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal import Journal, JournalError
from simulator.process import stop_process
from tests.fixtures.logguard import watch_stderr

SEQ = re.compile(r"decided seq=(\d+)")


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "terminal.toml"
    cfg.write_text(
        "[terminal]\n"
        'id = "BUS-SUP"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "demo = true\n"
        "[cards]\n"
        'backend = "sim"\n'
        "options = { rate_per_min = 1200, population_size = 30 }\n"
        "[mqtt]\n"
        "enabled = false\n"
    )
    return cfg


class Notifications:
    """A datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        """The first message (since the last match) containing a line matching ``pattern``."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no notification matching {pattern!r} in {timeout} s; "
                                     f"seen: {self.seen[-10:]}")
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.seen.append(msg)
            if rx.search(msg):
                return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify.sock")
    try:
        yield n
    finally:
        n.close()


def _start(cfg: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    watch_stderr(log, f"agent process {log.name}")
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "-vv", "agent", "run",
                                 "--config", str(cfg)], stderr=err, stdout=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})


def _max_seq(log: Path) -> int:
    return max((int(m.group(1)) for m in SEQ.finditer(log.read_text(errors="replace"))),
               default=0)


def _wait_seq(log: Path, at_least: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := _max_seq(log)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"no decision beyond seq {n}:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return n


def test_a_second_daemon_on_the_same_data_directory_refuses_and_the_first_goes_on(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    log = tmp_path / "first.log"
    first = _start(cfg, log)
    try:
        seen = _wait_seq(log, 2)
        second = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "run",
                                 "--config", str(cfg)], capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1
        assert f"another ykt agent (PID {first.pid}) is running on {tmp_path / 'data'}" \
            in second.stderr
        assert "Traceback" not in second.stderr
        # read-only commands still work next to the running daemon
        show = subprocess.run([sys.executable, "-m", "agent.cli", "journal", "verify",
                               "--config", str(cfg)], capture_output=True, text=True,
                              timeout=60)
        assert show.returncode == 0, show.stderr
        _wait_seq(log, seen + 3)      # the first daemon keeps deciding
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
    finally:
        stop_process(first, kill=True)
    j = Journal(tmp_path / "data" / "journal.db", "BUS-SUP")
    assert j.verify() == [] and j.last_seq >= seen + 3
    assert j.last_seq == _max_seq(log), "the refused daemon must not have journaled anything"
    j.close()


def test_the_lock_dies_with_the_daemon(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    log = tmp_path / "agent.log"
    proc = _start(cfg, log)
    _wait_seq(log, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    again = _start(cfg, log)          # the stale lock file does not block the restart
    try:
        before = _max_seq(log)
        _wait_seq(log, before + 2)
    finally:
        stop_process(again)


@pytest.mark.expect_log("agent.sdnotify", r"unhealthy: decision worker stalled")
def test_the_watchdog_follows_the_decision_worker(tmp_path: Path,
                                                  notify_socket: Notifications) -> None:
    cfg = _config(tmp_path)
    log = tmp_path / "agent.log"
    # WatchdogSec=2: ping every 1 s; a worker silent for 2 s is stuck
    proc = _start(cfg, log, {"NOTIFY_SOCKET": str(notify_socket.path),
                             "WATCHDOG_USEC": "2000000"})
    try:
        notify_socket.wait_for(r"^READY=1$")
        notify_socket.wait_for(r"^WATCHDOG=1$")
        _wait_seq(log, 1)
        # a writer holding the journal: the next decision waits in SQLite's busy handler
        blocker = sqlite3.connect(tmp_path / "data" / "journal.db", isolation_level=None,
                                  timeout=5)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            notify_socket.wait_for(r"^STATUS=unhealthy: decision worker stalled")
            stalled_at = len(notify_socket.seen)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        notify_socket.wait_for(r"^STATUS=deciding as BUS-SUP$")
        notify_socket.wait_for(r"^WATCHDOG=1$")
        # while stalled, no ping went out between the STATUS and the recovery
        stalled_msgs = notify_socket.seen[stalled_at:-2]
        assert "WATCHDOG=1" not in stalled_msgs, stalled_msgs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        notify_socket.wait_for(r"^STOPPING=1$")
    finally:
        stop_process(proc, kill=True)


@pytest.mark.expect_log("agent.sdnotify", r"unhealthy: journal .* changed underneath")
@pytest.mark.expect_log("agent.sdnotify", r"stopping with status 1")
@pytest.mark.expect_log("agent.engine", r"journal append failed", optional=True,
                        reason="a tap between the intrusion and the next health check")
def test_a_journal_written_underneath_makes_the_daemon_exit_1(
        tmp_path: Path, notify_socket: Notifications) -> None:
    cfg = _config(tmp_path)
    log = tmp_path / "agent.log"
    proc = _start(cfg, log, {"NOTIFY_SOCKET": str(notify_socket.path),
                             "WATCHDOG_USEC": "1000000"})
    try:
        notify_socket.wait_for(r"^READY=1$")
        _wait_seq(log, 1)
        # another writer that did not take the lock (a copy of the agent from before it)
        for _attempt in range(20):      # the daemon may take the next seq in between
            intruder = Journal(tmp_path / "data" / "journal.db", "BUS-SUP")
            try:
                intruder.append({"event": "intruder"})
                break
            except JournalError:
                continue
            finally:
                intruder.close()
        else:
            raise AssertionError("the intruder never got a record in")
        notify_socket.wait_for(r"^STATUS=unhealthy: journal .* changed underneath")
        assert proc.wait(20) == 1
    finally:
        stop_process(proc, kill=True)
    j = Journal(tmp_path / "data" / "journal.db", "BUS-SUP")
    assert j.verify() == [], "the stale daemon must not have broken the chain"
    assert any(r.body.get("event") == "intruder" for r in j.records(0, 10_000))
    j.close()
    restarted = _start(cfg, tmp_path / "again.log")
    try:
        _wait_seq(tmp_path / "again.log", 1)
    finally:
        stop_process(restarted)
