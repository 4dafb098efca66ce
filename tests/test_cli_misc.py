"""Small promises of the `ykt` command: `--version`, `-v` anywhere on the line, and
`ykt gate test` against the host-built gate firmware on a pty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main, split_verbosity

ROOT = Path(__file__).resolve().parents[1]


def test_version() -> None:
    r = subprocess.run([sys.executable, "-m", "agent.cli", "--version"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("ykt 0.")


def test_verbosity_anywhere_on_the_line() -> None:
    assert split_verbosity(["journal", "show", "-v"]) == (1, ["journal", "show"])
    assert split_verbosity(["-v", "journal", "-vv", "show"]) == (3, ["journal", "show"])
    assert split_verbosity(["x", "--verbose", "--", "-v"]) == (1, ["x", "--", "-v"])
    assert split_verbosity(["--value", "-x"]) == (0, ["--value", "-x"])


def test_gate_test_opens_the_sim_gate_and_refuses_without_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[terminal]\nid = "G1"\ndata_dir = "{tmp_path / "d"}"\n'
                   '[gate]\nenabled = true\nbackend = "sim"\n', encoding="utf-8")
    assert main(["gate", "test", "--config", str(cfg), "--open-ms", "300"]) == 0
    assert "opened in for 300 ms" in capsys.readouterr().out
    none = tmp_path / "n.toml"
    none.write_text(f'[terminal]\nid = "G1"\ndata_dir = "{tmp_path / "d"}"\n', encoding="utf-8")
    assert main(["gate", "test", "--config", str(none)]) == 2
    assert "has no gate" in capsys.readouterr().err
