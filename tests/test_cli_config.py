"""`ykt config show|get|set`: a change goes through the checks start-up makes, is written
atomically with the previous file kept, keeps the file's comments, and rolls back."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "terminal.sample.toml"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "terminal.toml"
    text = SAMPLE.read_text(encoding="utf-8").replace('"/var/lib/ykt"',
                                                      f'"{tmp_path / "data"}"')
    path.write_text(text, encoding="utf-8")
    return path


def test_set_checks_writes_atomically_keeps_comments_and_rolls_back(
        cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = cfg.read_text(encoding="utf-8")
    assert main(["config", "set", "journal.retention_days", "14", "--config", str(cfg)]) == 0
    after = cfg.read_text(encoding="utf-8")
    assert "retention_days = 14" in after
    assert "# /etc/ykt/terminal.toml: one terminal's configuration" in after   # comments kept
    assert cfg.with_name("terminal.toml.previous").read_text(encoding="utf-8") == before
    capsys.readouterr()
    assert main(["config", "get", "journal.retention_days", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out) == 14.0
    # mistakes start-up would refuse are refused, and the file is not touched
    for key, value, why in (
            ("cards.options.rate_per_mn", "60", "Extra inputs are not permitted"),
            ("mqtt.tls_ca_file", '"/nonexistent/ca.crt"', "does not exist"),
            ("journal.retention_days", "-1", "greater than or equal to 0")):
        assert main(["config", "set", key, value, "--config", str(cfg)]) == 2, key
        assert why in capsys.readouterr().err, key
        assert cfg.read_text(encoding="utf-8") == after, key
    assert main(["config", "set", "--rollback", "--config", str(cfg)]) == 0
    assert cfg.read_text(encoding="utf-8") == before


def test_show_and_get(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config", str(cfg), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["terminal"]["id"] == "BUS-0001" and shown["journal"]["reserve_mb"] == 8
    assert main(["config", "get", "nope.key", "--config", str(cfg)]) == 2
    assert "no key 'nope.key'" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the file to another group needs root")
def test_set_keeps_the_files_owner_group_and_mode(cfg: Path) -> None:
    """An installed /etc/ykt/terminal.toml is root:ykt 0640: after `config set` (run as
    root) the agent, group ykt, must still read it."""
    os.chown(cfg, 0, 4242)
    cfg.chmod(0o640)
    assert main(["config", "set", "journal.retention_days", "14", "--config", str(cfg)]) == 0
    st = cfg.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 4242, 0o640)
