"""The daemon as a real process: kill -9 at random moments, SIGTERM, refusing bad config."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.config import load_config
from agent.daemon import Terminal
from agent.journal import Journal
from agent.model import Reason
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource
from tests.fixtures.logguard import watch_stderr

SEQ = re.compile(r"decided seq=(\d+)")


def _config(tmp_path: Path, rate_per_min: float = 20000) -> Path:
    cfg = tmp_path / "terminal.toml"
    cfg.write_text(
        "[terminal]\n"
        'id = "BUS-T1"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "demo = true\n"
        "[cards]\n"
        'backend = "sim"\n'
        f"options = {{ rate_per_min = {rate_per_min}, population_size = 30 }}\n"
        "[mqtt]\n"
        "enabled = false\n"
    )
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    watch_stderr(log, "agent process")
    with open(log, "ab") as err:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "-vv", "agent", "run",
                                 "--config", str(cfg)], stderr=err, stdout=subprocess.DEVNULL)


def _max_logged_seq(log: Path) -> int:
    seqs = [int(m.group(1)) for m in SEQ.finditer(log.read_text(errors="replace"))]
    return max(seqs, default=0)


def _wait_for_seq(log: Path, at_least: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = _max_logged_seq(log)
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"daemon logged no decision beyond seq {at_least - 1} in {timeout} s; "
                         f"log:\n{log.read_text()[-2000:]}")


def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    log = tmp_path / "agent.log"
    rnd = random.Random(1234)
    witnessed = 0
    for _round in range(4):
        proc = _start(cfg, log)
        _wait_for_seq(log, witnessed + 1)
        time.sleep(rnd.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        witnessed = _max_logged_seq(log)   # logged only after the commit
    j = Journal(tmp_path / "data" / "journal.db", "BUS-T1")
    assert j.last_seq >= witnessed > 0, "a record the daemon reported as journaled is missing"
    recs = j.records(0, 10**6)
    assert [r.seq for r in recs] == list(range(1, j.last_seq + 1)), "gap in the sequence"
    assert j.verify() == [], "hash chain does not verify after kill -9"


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    cfg = _config(tmp_path, rate_per_min=3000)
    log = tmp_path / "agent.log"
    proc = _start(cfg, log)
    _wait_for_seq(log, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    j = Journal(tmp_path / "data" / "journal.db", "BUS-T1")
    assert j.verify() == [] and j.last_seq >= 3


def test_config_typo_refuses_to_start_and_names_file_line_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[terminal]\nid = "BUS-T1"\ndata_dir = "{tmp_path / "data"}"\n'
                   '[cards]\nbackend = "sim"\nopitons = {}\n')
    r = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"{cfg}:6: cards.opitons: Extra inputs are not permitted" in r.stderr
    assert not (tmp_path / "data").exists(), "the daemon must not start with half a config"


def test_profile_with_failing_vector_is_refused(tmp_path: Path) -> None:
    src = Path(__file__).parents[1] / "profiles" / "bus_validator.toml"
    bad = tmp_path / "bus.toml"
    bad.write_text(src.read_text(encoding="utf-8").replace(
        'product = "student_half"\namount = "student_fare"',
        'product = "student_half"\namount_cents = 150'), encoding="utf-8")
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[terminal]\nprofile = "{bad}"\ndata_dir = "{tmp_path / "d"}"\ndemo = true\n')
    r = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "student half fare" in r.stderr and "refusing to activate" in r.stderr


def test_card_pulled_mid_read_prompts_tap_again_without_a_record(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, rate_per_min=0))
    prompter = SimPrompter()
    terminal = Terminal(cfg, actuators=[prompter])
    cards = SimCardSource(terminal.pseudonymizer, population_size=5)
    terminal._sources_override = [cards]
    outcomes = []
    terminal.add_listener(outcomes.append)
    terminal.start()
    try:
        cards.pull_mid_read()
        cards.tap(cards.population.holders[0])
        assert terminal.drain(10)
    finally:
        terminal.stop()
    assert outcomes[0].decision.reason is Reason.CARD_REMOVED and outcomes[0].record is None
    assert prompter.history[0].text == "请重新刷卡"
    assert outcomes[1].record is not None and outcomes[1].record.seq == 1


def test_inspecting_a_missing_journal_reports_and_creates_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    for cmd in (["journal", "show"], ["journal", "verify"], ["journal", "stats"]):
        r = subprocess.run([sys.executable, "-m", "agent.cli", *cmd, "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "no journal at" in r.stderr, cmd
    assert not (tmp_path / "data").exists()
