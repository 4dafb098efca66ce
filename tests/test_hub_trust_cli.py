"""``ykt hub ca init | identity issue | broker-config | enroll | web`` as an operator runs
them: files with strict modes, no private key or token in any output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.enroll import enroll
from simulator.broker import free_port
from sync.hub.enroll import issue_token
from sync.session import NOT_AUTHORIZED, BrokerSession
from tests.fixtures.tls_broker import TlsBroker


def test_ca_init_identity_issue_and_broker_config(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ident = tmp_path / "hub"
    assert main(["hub", "ca", "init", "--identity", str(ident), "--hub-id", "hub-7",
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert len(json.loads(out)["ca_fingerprint"]) == 64
    assert stat.S_IMODE(ident.stat().st_mode) == 0o700
    for key in ("ca.key", "hub-signing.key", "hub.key", "admin.key"):
        assert stat.S_IMODE((ident / key).stat().st_mode) == 0o600, key
    assert main(["hub", "ca", "init", "--identity", str(ident)]) == 2   # never replaced
    assert "exists already" in capsys.readouterr().err
    assert main(["hub", "identity", "issue", "ops-1", "--role", "operator", "--identity",
                 str(ident), "--out", str(tmp_path / "ops"), "--json"]) == 0
    out += capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "ops" / "ops-1.key").stat().st_mode) == 0o600
    assert main(["hub", "broker-config", "--identity", str(ident), "--out",
                 str(tmp_path / "broker"), "--operator", "ops-1", "--json"]) == 0
    out += capsys.readouterr().out
    doc = json.loads((tmp_path / "broker" / "dynsec" / "dynamic-security.json").read_text())
    users = {c["username"]: [r["rolename"] for r in c["roles"]] for c in doc["clients"]}
    assert users == {"hub-7": ["hub"], "ops-1": ["operator"], "ykt-admin": ["admin"]}
    assert doc["defaultACLAccess"]["publishClientSend"] is False
    assert doc["defaultACLAccess"]["subscribe"] is False
    assert "PRIVATE KEY" not in out


def test_enroll_never_prints_the_token_in_json(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ident = tmp_path / "hub"
    assert main(["hub", "ca", "init", "--identity", str(ident)]) == 0
    capsys.readouterr()
    assert main(["hub", "enroll", "bus-9", "--identity", str(ident), "--json"]) == 2
    res = capsys.readouterr()
    assert "ykt1." not in res.out and "--token-file" in res.err
    assert main(["hub", "enroll", "bus-9", "--identity", str(ident)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ykt1.")
    stored = b"".join(p.read_bytes() for p in (ident / "enroll").iterdir()) + b"".join(
        p.name.encode() for p in (ident / "enroll").iterdir())
    assert token.split(".")[2].encode() not in stored and token.encode() not in stored


def test_hub_web_serves_enrollment_and_adds_the_terminal_to_the_broker(
        tls_broker: TlsBroker, tmp_path: Path) -> None:
    tb = tls_broker
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "-v", "hub", "web", "--identity",
         str(tb.ca.paths.dir), "--listen-port", str(port), "--port", str(tb.broker.port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        assert "hub web ready" in proc.stdout.readline()
        token, _ = issue_token(tb.ca, "K", ["rail"])
        res = enroll(f"https://127.0.0.1:{port}", token, tmp_path / "K")
        assert res.terminal == "K"
        d = tmp_path / "K"
        settings = tb.settings("A").model_copy(update={
            "tls_cert_file": d / "terminal.crt", "tls_key_file": d / "terminal.key"})
        with BrokerSession(settings, "K") as k:
            k.connect()
            assert k.subscribe("ykt/v1/policy/rail/manifest") == 1   # its role is live
            assert k.subscribe("ykt/v1/policy/bus/manifest") == NOT_AUTHORIZED
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert token.split(".")[2] not in out + err
