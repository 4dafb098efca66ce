"""`ykt diag` checks the real parts a configuration names and says what to do: the
journal's integrity and chain, the store, the disk, the QR decoder on a built-in frame,
the gate controller (the host-built firmware on a pty), GPIO lines, the broker."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import agent.clock
from agent.cli import main
from agent.journal import Journal
from agent.model import ClockQuality
from simulator.broker import Mosquitto


@pytest.fixture(autouse=True)
def _synced_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """This VM's kernel may call its clock unsynchronised; the clock check is not the
    subject here (it is below, both ways)."""
    monkeypatch.setattr(agent.clock, "clock_quality", lambda: ClockQuality.SYNCED)


def _diag(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["diag", "--config", str(cfg), "--json"])
    return code, {c["name"]: c for c in json.loads(capsys.readouterr().out)}


def _config(tmp_path: Path, extra: str = "[mqtt]\nenabled = false\n[cards]\nbackend = \"sim\"\n"
            ) -> Path:
    """A terminal config with ``extra`` appended. The default's sim cards keep the card
    check off pcscd: whether pcscd happens to run (another test left it) is no part of
    these checks (the real readers are checked in test_card_pcsc)."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[terminal]\nid = "BUS-D"\ndemo = true\ndata_dir = "{tmp_path / "d"}"\n'
                   + extra, encoding="utf-8")
    return cfg


def _journal(tmp_path: Path, n: int = 20) -> Path:
    j = Journal(tmp_path / "d" / "journal.db", "BUS-D")
    for _ in range(n):
        j.append({"event": "tap"})
    j.close()
    return tmp_path / "d" / "journal.db"


def test_a_healthy_terminal_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _journal(tmp_path)
    code, checks = _diag(_config(tmp_path), capsys)
    assert code == 0, checks
    assert checks["journal"]["ok"] is True and "chain verifies" in checks["journal"]["detail"]
    assert checks["config"]["ok"] is True and checks["disk"]["ok"] is True
    assert checks["broker"]["ok"] is None and checks["gate controller"]["ok"] is None


def test_a_broken_chain_and_a_corrupt_file_fail_with_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _journal(tmp_path)
    db = sqlite3.connect(path)
    db.execute("UPDATE records SET body = replace(body, 'tap', 'tip') WHERE seq = 7")
    db.commit()
    db.close()
    code, checks = _diag(_config(tmp_path), capsys)
    assert code == 1 and checks["journal"]["ok"] is False
    assert "chain broken at seq 7" in checks["journal"]["detail"] and checks["journal"]["fix"]
    with open(path, "r+b") as f:                      # a card that garbled the file's header
        f.write(b"\xff" * 100)
    code, checks = _diag(_config(tmp_path), capsys)
    assert code == 1 and checks["journal"]["ok"] is False
    assert "integrity_check: file is not a database" in checks["journal"]["detail"]
    assert "keep a copy" in checks["journal"]["fix"]
    assert "Traceback" not in capsys.readouterr().err


def test_the_broker_is_reached_or_reported(tmp_path: Path, broker: Mosquitto,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n')
    code, checks = _diag(cfg, capsys)
    assert checks["broker"]["ok"] is True, checks["broker"]
    broker.stop()
    code, checks = _diag(cfg, capsys)
    assert code == 1 and checks["broker"]["ok"] is False and checks["broker"]["fix"]


def test_the_qr_decoder_reads_its_test_frame(tmp_path: Path,
                                             qr_trust_doc: dict[str, object],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    trust = tmp_path / "issuers.json"
    trust.write_text(json.dumps(qr_trust_doc), encoding="utf-8")
    cfg = _config(tmp_path, "[mqtt]\nenabled = false\n[cards]\nenabled = false\n"
                  f'[codes]\nenabled = true\nbackend = "camera"\ntrust_file = "{trust}"\n')
    _, checks = _diag(cfg, capsys)
    assert checks["QR decoder"]["ok"] is True, checks["QR decoder"]


def test_the_gate_controller_answers(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, '[mqtt]\nenabled = false\n[gate]\nenabled = true\nbackend = "sim"\n')
    _, checks = _diag(cfg, capsys)
    assert checks["gate controller"]["ok"] is True, checks["gate controller"]


def test_an_unsynchronised_clock_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(agent.clock, "clock_quality", lambda: ClockQuality.UNSYNCED)
    code, checks = _diag(_config(tmp_path), capsys)
    assert code == 1 and checks["clock"]["ok"] is False and "NTP" in checks["clock"]["fix"]
