"""The technician's CLI as a technician meets it: every mistake start-up would hit is
reported by `ykt config validate` and by `ykt agent run` the same way (file, key, what to
do; exit 2; nothing created, no traceback); `| head` ends quietly; `agent status` finds a
store that lives in generations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.journal import Journal
from tests.fixtures.policy import PolicyEnv

ROOT = Path(__file__).resolve().parents[1]


def _ykt(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _config(tmp_path: Path, extra: str, data_dir: Path | None = None) -> Path:
    cfg = tmp_path / "terminal.toml"
    cfg.write_text('[terminal]\nid = "BUS-CLI"\ndemo = true\n'
                   f'data_dir = "{data_dir or tmp_path / "data"}"\n' + extra,
                   encoding="utf-8")
    return cfg


def test_validate_without_a_file_is_a_usage_error() -> None:
    r = _ykt("config", "validate")
    assert r.returncode == 2
    assert "give a config file" in r.stderr and r.stdout == ""


@pytest.mark.parametrize(("extra", "expected"), [
    ('[mqtt]\ntls_ca_file = "/nonexistent/ca.crt"\n',
     "mqtt.tls_ca_file: /nonexistent/ca.crt does not exist"),
    ('[mqtt]\nenabled = true\n[policy]\nenabled = true\nchannel = "city/370302/bus"\n'
     'anchor_file = "/nonexistent/roots/1.json"\n',
     "policy.anchor_file: /nonexistent/roots/1.json does not exist"),
    ('[codes]\nenabled = true\nbackend = "sim"\ntrust_file = "/nonexistent/issuers.json"\n',
     "codes.trust_file: /nonexistent/issuers.json does not exist"),
])
def test_missing_files_are_refused_by_validate_and_by_run_alike(
        tmp_path: Path, extra: str, expected: str) -> None:
    cfg = _config(tmp_path, extra)
    for cmd in (["config", "validate", str(cfg)], ["agent", "run", "--config", str(cfg)]):
        r = _ykt(*cmd)
        assert r.returncode == 2, (cmd, r.stderr)
        assert f"{cfg}: {expected}" in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists(), "nothing may be created before the checks"


def test_a_data_dir_that_is_a_file_is_refused_before_anything_is_created(
        tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = _config(tmp_path, "[mqtt]\nenabled = false\n", data_dir=blocker)
    for cmd in (["config", "validate", str(cfg)], ["agent", "run", "--config", str(cfg)]):
        r = _ykt(*cmd)
        assert r.returncode == 2 and f"terminal.data_dir: {blocker} is not a directory" \
            in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_journal_show_into_head_ends_quietly(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[mqtt]\nenabled = false\n")
    j = Journal(tmp_path / "data" / "journal.db", "BUS-CLI")
    for _ in range(3000):
        j.append({"event": "tap", "accepted": True, "reason": "accepted"})
    j.close()
    r = subprocess.run(f"{sys.executable} -m agent.cli journal show --config {cfg} "
                       f"--last 3000 | head -n 2", shell=True, capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert len(r.stdout.splitlines()) == 2
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_agent_status_finds_the_store_in_its_generation(policy_env: PolicyEnv,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    env = policy_env
    t = env.terminal("T1")
    env.build(env.population_sources())
    applied = t.applier.offer(env.repo.latest_envelope(), None)
    assert applied is not None and applied.mode == "snapshot"
    assert t.store.active_path != t.store.path, "the snapshot lives in a generation file"
    cfg = env.tmp / "t1.toml"
    cfg.write_text(f'[terminal]\nid = "T1"\ndata_dir = "{env.tmp / "T1"}"\n',
                   encoding="utf-8")
    assert main(["agent", "status", "--config", str(cfg), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["policy"] == "city/370302/bus@1"
    assert status["entitlements"] > 0 and "unmerged" in status
