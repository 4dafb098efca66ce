"""Secrets: one reader (:func:`agent.keys.read_secret`) and one rule for every secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.keys import pseudonym_key, read_secret
from agent.mqtt_settings import MqttSettings
from drivers.psam import ReferenceKeys


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("YKT_MQTT_PASSWORD", "YKT_PSEUDONYM_KEY", "YKT_PSAM_KEYS", "YKT_TEST_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    return tmp_path


def test_only_the_line_end_is_removed_from_either_source(
        creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (creds / "test-secret").write_text("  pass word \t\r\n", encoding="utf-8")
    assert read_secret("test-secret", "YKT_TEST_SECRET") == "  pass word \t"
    monkeypatch.setenv("YKT_TEST_SECRET", " from env \n")
    assert read_secret("test-secret", "YKT_TEST_SECRET") == " from env "


def test_an_empty_value_counts_as_not_set(creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_secret("test-secret", "YKT_TEST_SECRET") is None         # neither source
    (creds / "test-secret").write_text("\r\n", encoding="utf-8")
    assert read_secret("test-secret", "YKT_TEST_SECRET") is None
    (creds / "test-secret").write_text("file\n", encoding="utf-8")
    monkeypatch.setenv("YKT_TEST_SECRET", "\n")                       # empty: the file wins
    assert read_secret("test-secret", "YKT_TEST_SECRET") == "file"


def test_every_secret_goes_through_the_one_reader(creds: Path) -> None:
    # the MQTT password keeps its spaces (the rule), the hex keys parse with theirs
    (creds / "mqtt-password").write_text(" s3cret \n", encoding="utf-8")
    assert MqttSettings(username="bus-1").password() == " s3cret "
    (creds / "pseudonym-key").write_text("00112233 44556677\r\n", encoding="utf-8")
    assert pseudonym_key(demo=False) == bytes.fromhex("0011223344556677")
    (creds / "ykt-psam-keys").write_text(f"{'11' * 16}:{'22' * 16}\n", encoding="utf-8")
    keys = ReferenceKeys.from_environment()
    assert (keys.internal, keys.external) == (b"\x11" * 16, b"\x22" * 16)
