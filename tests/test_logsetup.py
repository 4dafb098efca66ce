"""`ykt agent run` logs like a service: one INFO line for a healthy start (terminal,
profile, policy), the terminal id on every line, and under systemd (stderr is the
journal) syslog priorities instead of timestamps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_until_started(tmp_path: Path, env: dict[str, str]) -> list[str]:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[terminal]\nid = "BUS-LOG"\ndemo = true\n'
                   f'data_dir = "{tmp_path / "data"}"\n'
                   '[cards]\nbackend = "sim"\noptions = { rate_per_min = 0 }\n'
                   "[mqtt]\nenabled = false\n", encoding="utf-8")
    err = tmp_path / "stderr.log"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "agent", "run", "--config",
                                 str(cfg)], stderr=f, stdout=subprocess.DEVNULL, cwd=ROOT,
                                env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 30
        while "started (profile" not in err.read_text(errors="replace"):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the agent never said it started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err.read_text(errors="replace").splitlines()


def test_a_healthy_start_is_one_info_line_with_the_terminal_on_every_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    lines = _run_until_started(tmp_path, {})
    assert lines and all("[BUS-LOG] " in line for line in lines), lines
    infos = [line for line in lines if " INFO " in line and "stopping" not in line]
    assert len(infos) == 1, lines               # the start; the stop says it is stopping
    assert re.search(r"\[BUS-LOG\] INFO agent\.daemon: terminal BUS-LOG started "
                     r"\(profile bus_validator, policy \S+\)$", infos[0])


def test_under_systemd_lines_carry_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    lines = _run_until_started(tmp_path, {"JOURNAL_STREAM": "8:12345"})
    assert lines and all(re.match(r"^<[2-7]>\[BUS-LOG\] \S+: ", line) for line in lines), lines
    assert any(line.startswith("<6>[BUS-LOG] agent.daemon: terminal BUS-LOG started")
               for line in lines)
    assert any(line.startswith("<4>") for line in lines)        # the demo key warning
