"""SM2 (国密) support is claimed only when it works: a backend is used, named by
``ykt diag`` and printed by ``scripts/install`` only after it verifies a known SM2
signature and refuses it over altered data (agent/codes/sm2_check.py). A libcrypto that
loads but verifies nothing, or accepts everything, is not claimed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.codes import algorithms as algs
from agent.codes import sm2_libcrypto
from agent.codes.algorithms import AlgorithmUnavailable, algorithm, sm2_backend
from agent.codes.sm2_check import KNOWN_ANSWER, self_test, sm2_support

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    saved = dict(algs._instances)
    algs._instances.clear()
    yield
    algs._instances.clear()
    algs._instances.update(saved)


@pytest.fixture
def without_tongsuopy(fresh_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on aarch64: importing tongsuopy fails."""
    for name in [m for m in sys.modules if m == "tongsuopy" or m.startswith("tongsuopy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tongsuopy", None)


def _diag_sm2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[terminal]\nid = "BUS-S"\ndemo = true\ndata_dir = "{tmp_path / "d"}"\n'
                   '[mqtt]\nenabled = false\n[cards]\nbackend = "sim"\n', encoding="utf-8")
    main(["diag", "--config", str(cfg), "--json"])
    return {c["name"]: c for c in json.loads(capsys.readouterr().out)}["SM2 (国密)"]


def test_the_libcrypto_backend_passes_its_known_answer_test(without_tongsuopy: None) -> None:
    assert sm2_libcrypto.available(), "Debian 12's OpenSSL 3.0 has SM2"
    assert sm2_backend() == "libcrypto"
    assert self_test(algorithm("SM2")) is None
    s = sm2_support()
    assert s.available and s.backend == "libcrypto" and "known-answer test passed" in s.detail


@pytest.mark.parametrize("broken", [lambda *a: True, lambda *a: False],
                         ids=["accepts-everything", "verifies-nothing"])
def test_a_libcrypto_that_does_not_verify_sm2_is_not_claimed(
        without_tongsuopy: None, monkeypatch: pytest.MonkeyPatch, broken: Any,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sm2_libcrypto, "verify", broken)
    with pytest.raises(AlgorithmUnavailable, match="libcrypto fails the SM2 known-answer"):
        algorithm("SM2")
    assert sm2_backend() == "none"
    assert not sm2_support().available
    check = _diag_sm2(tmp_path, capsys)
    assert check["ok"] is None and check["detail"].startswith("none: ")
    assert "known-answer" in check["detail"]


def test_a_broken_tongsuopy_falls_back_to_libcrypto(
        fresh_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tongsuopy")
    monkeypatch.setattr(algs.SM2SM3, "verify", lambda self, *a: True)
    assert sm2_backend() == "libcrypto"


def test_the_check_command_and_diag_say_the_same(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "agent.codes.sm2_check"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    line = r.stdout.strip()
    assert r.returncode == (0 if not line.startswith("none:") else 1), r.stderr
    assert _diag_sm2(tmp_path, capsys)["detail"] == line
    as_json = json.loads(subprocess.run(
        [sys.executable, "-m", "agent.codes.sm2_check", "--json"], capture_output=True,
        text=True, timeout=60, cwd=ROOT).stdout)
    assert line.startswith(as_json["backend"] + ": ")


def test_the_known_answer_is_an_sm2_key() -> None:
    assert b"BEGIN PUBLIC KEY" in KNOWN_ANSWER["public_pem"]
    assert len(KNOWN_ANSWER["signature"]) == 64
