"""``ykt qr issue key|cert|code`` and ``ykt qr decode``, end to end on files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main


def test_issue_and_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trust = tmp_path / "trust.toml"
    assert main(["qr", "issue", "key", "--kid", "pilot-1", "--iss", "370100",
                 "--key-out", str(tmp_path / "issuer.pem"), "--trust", str(trust)]) == 0
    assert (tmp_path / "issuer.pem").stat().st_mode & 0o777 == 0o600
    assert main(["qr", "issue", "cert", "--issuer-key", str(tmp_path / "issuer.pem"),
                 "--kid", "pilot-1", "--iss", "370100", "--holder-key", "ab" * 16,
                 "--categories", "elderly", "--out", str(tmp_path / "holder.json")]) == 0
    png = tmp_path / "code.png"
    assert main(["qr", "issue", "code", "--holder", str(tmp_path / "holder.json"),
                 "--png", str(png)]) == 0
    capsys.readouterr()
    assert main(["qr", "decode", str(png), "--trust", str(trust), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    code = out[0]["codes"][0]
    assert code["accepted"] and code["holder_key"] == "ab" * 16
    assert "text" not in code and code["code"].startswith("YKT1:")
    # the same image again is a replay within one run
    assert main(["qr", "decode", str(png), str(png), "--trust", str(trust)]) == 1
    text = capsys.readouterr().out
    assert "accepted qr:ykt1" in text and "refused code_replayed" in text


def test_decode_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{")
    assert main(["qr", "decode", "x.png", "--trust", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["qr", "decode", str(tmp_path / "missing.png")]) == 1
    assert "cannot read image" in capsys.readouterr().out
