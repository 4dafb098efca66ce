"""One error root: every project exception derives from YktError, keeps its standard
mix-in, is in the documented tree, and ``ykt`` maps it to exit 2 (usage/configuration)
or 1 (a failure reported)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from pathlib import Path

import pytest

import agent.errors
from agent import cli
from agent.cli import agent as cli_agent
from agent.errors import ConfigurationError, Unavailable, YktError, exit_code
from tests.test_architecture import modules

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ("cv2", "pyzbar", "zxingcpp", "gpiozero", "smartcard", "psycopg", "tongsuopy")


def project_exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a project module: name → class."""
    found: dict[str, type[BaseException]] = {}
    for name in sorted(modules()):
        if name.endswith(".__main__"):      # runs `ykt` when imported (python -m agent.cli)
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as err:          # an optional extra not installed here
            if err.name and err.name.split(".")[0] in OPTIONAL:
                continue
            raise
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == name and not attr.startswith("_")):
                found[attr] = obj
    return found


def tree_names(text: str) -> set[str]:
    """The class names of the ASCII tree in ``text``: from its ``YktError`` root line to the
    first blank line or code fence."""
    root = re.search(r"^[ \t]*YktError\b", text, re.M)
    assert root is not None, "no tree rooted at YktError"
    lines = text[root.start():].split("\n")
    block = [lines[0]]
    for line in lines[1:]:
        if not line.strip() or line.strip().startswith("```"):
            break
        block.append(line)
    return {m.group(1) for line in block
            if (m := re.match(r"^(?:[\s│]*[├└]── )?([A-Z][A-Za-z0-9]+)", line.strip()))}


def test_every_project_exception_has_the_one_root() -> None:
    found = project_exceptions()
    assert {"ConfigFileError", "RuleSetError", "ConfigError", "DriverUnavailable",
            "AlgorithmUnavailable", "CardError", "PsamError", "StoreError"} <= set(found)
    assert [n for n, cls in found.items() if not issubclass(cls, YktError)] == []


@pytest.mark.parametrize("doc", ["agent/errors.py", "docs/architecture.md"])
def test_the_documented_tree_is_the_real_one(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert set(project_exceptions()) | {"YktError"} == tree_names(text)


def test_the_standard_types_stay_mixed_in() -> None:
    from agent.codes.algorithms import AlgorithmUnavailable
    from agent.journal import JournalError
    from agent.rules import RuleSetError
    from agent.tomlconf import ConfigFileError
    from drivers.exceptions import ConfigError, DeviceError, DriverError, DriverUnavailable
    from sync.link import NotConnected

    assert issubclass(ConfigFileError, ValueError) and issubclass(RuleSetError, ValueError)
    assert issubclass(ConfigError, DriverError) and issubclass(ConfigError, ConfigurationError)
    assert issubclass(DriverUnavailable, ImportError) and issubclass(DriverUnavailable, DriverError)
    assert issubclass(AlgorithmUnavailable, Unavailable) and issubclass(DeviceError, OSError)
    assert issubclass(JournalError, RuntimeError) and issubclass(NotConnected, ConnectionError)


def test_exit_codes_follow_the_tree() -> None:
    from agent.codes.algorithms import AlgorithmUnavailable
    from agent.journal import JournalError
    from agent.policy.errors import BundleRefused, Refusal
    from agent.rules import RuleSetError
    from drivers.exceptions import ConfigError, DriverUnavailable, ReaderError

    for usage in (RuleSetError("r"), ConfigError("c"), DriverUnavailable("d"),
                  AlgorithmUnavailable("a")):
        assert exit_code(usage) == agent.errors.EXIT_USAGE == 2
    for failure in (JournalError("j"), ReaderError("r"),
                    BundleRefused(Refusal.EXPIRED, "e")):
        assert exit_code(failure) == agent.errors.EXIT_FAILURE == 1


@pytest.mark.parametrize(("raised", "status"), [
    (YktError("a failure"), 1),
    (ConfigurationError("a bad option"), 2),
])
def test_ykt_maps_an_unhandled_project_error(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             raised: YktError, status: int) -> None:
    def validate(_args: object) -> int:
        raise raised

    monkeypatch.setattr(cli_agent, "_validate", validate)
    assert cli.main(["config", "validate"]) == status
    assert str(raised) in capsys.readouterr().err


def test_ykt_does_not_turn_any_value_error_into_a_usage_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def validate(_args: object) -> int:
        raise ValueError("a bug, not a usage error")

    monkeypatch.setattr(cli_agent, "_validate", validate)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["config", "validate"])


def test_agent_run_exits_2_for_a_bad_key_and_1_for_a_failing_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent import daemon
    from agent.journal import JournalError

    conf = tmp_path / "t.toml"
    conf.write_text(f'[terminal]\nid = "BUS-E1"\ndata_dir = "{tmp_path / "d"}"\n'
                    '[mqtt]\nenabled = false\n', encoding="utf-8")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("YKT_PSEUDONYM_KEY", "not hex")
    assert cli.main(["agent", "run", "--config", str(conf)]) == 2
    assert "pseudonym key must be hex" in capsys.readouterr().err

    def failing_start(_cfg: object) -> None:
        raise JournalError("journal disk full")

    monkeypatch.setenv("YKT_PSEUDONYM_KEY", os.urandom(16).hex())
    monkeypatch.setattr(daemon, "Terminal", failing_start)
    assert cli.main(["agent", "run", "--config", str(conf)]) == 1
    assert "journal disk full" in capsys.readouterr().err
