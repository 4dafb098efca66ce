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
    # the OpenCV fallback finds the same clean ES256 code (it once found nothing)
    assert main(["qr", "decode", str(png), "--trust", str(trust), "--json",
                 "--decoder", "opencv"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["codes"][0]["accepted"]


def test_decode_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{")
    assert main(["qr", "decode", "x.png", "--trust", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["qr", "decode", str(tmp_path / "missing.png")]) == 1
    assert "cannot read image" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_issue_key_again_replaces_the_kid(tmp_path: Path, suffix: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Re-issuing a kid replaces its trust entry (a duplicate kid makes the file unloadable);
    other entries and the version stay."""
    from agent.codes import TrustStore, algorithm

    trust = tmp_path / f"trust{suffix}"
    if suffix == ".toml":
        trust.write_text('version = "2026-11"\n', encoding="utf-8")
    for kid in ("pilot-1", "pilot-2", "pilot-1"):
        assert main(["qr", "issue", "key", "--kid", kid, "--iss", "370100", "--key-out",
                     str(tmp_path / f"{kid}.pem"), "--trust", str(trust),
                     "--not-after", "2030-01-01T00:00:00Z"]) == 0
    store = TrustStore.load(trust)
    assert len(store) == 2
    if suffix == ".toml":
        assert store.version == "2026-11"
    es = algorithm("ES256")
    newest = es.load_private_pem((tmp_path / "pilot-1.pem").read_bytes())
    entry = store.get(b"pilot-1")
    assert entry is not None and entry.iss == "370100" and entry.not_after == 1893456000.0
    assert es.public_der(entry.public_key) == es.public_der(es.public_key(newest))
    capsys.readouterr()


def test_decode_credential_key_needs_the_pseudonym_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``ykt qr decode`` keys credential keys as the agent does: with the deployment key,
    the demo key only with --demo, else it leaves them out."""
    from agent.config import DEMO_PSEUDONYM_KEY
    from agent.pseudonym import Pseudonymizer

    monkeypatch.delenv("YKT_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    trust = tmp_path / "trust.json"
    assert main(["qr", "issue", "key", "--kid", "k1", "--key-out", str(tmp_path / "i.pem"),
                 "--trust", str(trust)]) == 0
    assert main(["qr", "issue", "cert", "--issuer-key", str(tmp_path / "i.pem"), "--kid", "k1",
                 "--holder-key", "cd" * 16, "--out", str(tmp_path / "h.json")]) == 0

    def decode(*extra: str) -> dict[str, object]:
        png = tmp_path / "code.png"  # a fresh code each time: no replay across runs
        assert main(["qr", "issue", "code", "--holder", str(tmp_path / "h.json"),
                     "--png", str(png)]) == 0
        capsys.readouterr()
        assert main(["qr", "decode", str(png), "--trust", str(trust), "--json", *extra]) == 0
        code: dict[str, object] = json.loads(capsys.readouterr().out)[0]["codes"][0]
        assert code["accepted"] and code["holder_key"] == "cd" * 16
        return code

    import base64

    import cbor2

    cert = base64.b64decode(json.loads((tmp_path / "h.json").read_text())["certificate"])
    cti = cbor2.loads(cbor2.loads(cert)[2])[7]

    def expected(key: bytes) -> str:
        return Pseudonymizer(key).key("qrcert", f"k1/{cti.hex()}")

    assert "credential_key" not in decode()
    assert decode("--demo")["credential_key"] == expected(DEMO_PSEUDONYM_KEY)
    monkeypatch.setenv("YKT_PSEUDONYM_KEY", (b"d" * 16).hex())
    assert decode()["credential_key"] == expected(b"d" * 16)
    assert decode("--demo")["credential_key"] == expected(b"d" * 16)  # the real key wins
