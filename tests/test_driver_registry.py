"""The driver registry and the per-backend options models, as a configuration meets them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.pseudonym import Pseudonymizer
from agent.tomlconf import ConfigFileError
from drivers.base import Actuator, PresentationSource
from drivers.exceptions import DriverUnavailable
from drivers.options import PromptOptions, SimCardOptions, SimCodeOptions
from drivers.registry import BACKENDS, load_actuator, load_source, options_for
from simulator.population import Population

PSEUDO = Pseudonymizer(bytes(16))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "terminal.toml"
    path.write_text('[terminal]\nid = "T1"\ndemo = true\n' + text)
    return path


def test_a_mistyped_option_is_refused_with_file_line_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[cards]\nbackend = "sim"\noptions = { rate_per_mn = 60 }\n')
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert err.value.problems == [
        f"{path}:6: cards.options.rate_per_mn: Extra inputs are not permitted"]


def test_an_unknown_backend_is_refused_naming_the_key_and_the_known_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, '[cards]\nbackend = "pcscc"\n')
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    [problem] = err.value.problems
    assert problem.startswith(f"{path}:5: cards.backend: ")
    assert "unknown cards backend 'pcscc' (known: auto, pcsc, sim)" in problem


def test_options_are_checked_against_the_backend_named_beside_them(tmp_path: Path) -> None:
    # a sim gate has no line: 'url' belongs to the serial backend's options
    path = _write(tmp_path, '[gate]\nenabled = false\nbackend = "sim"\n'
                            '[gate.options]\nopen_ms = 50\nurl = "/dev/ttyUSB0"\n')
    with pytest.raises(ConfigFileError) as err:
        load_config(path)
    assert sorted(err.value.problems) == [
        f"{path}:8: gate.options.open_ms: Input should be greater than or equal to 100",
        f"{path}:9: gate.options.url: Extra inputs are not permitted"]


def test_ykt_config_validate_reports_the_bad_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[codes]\nbackend = "scanner"\noptions = { baud = 9600 }\n')
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", str(path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode != 0
    assert f"{path}:6: codes.options.baud: Extra inputs are not permitted" in proc.stderr


def test_sections_carry_their_backend_s_typed_options() -> None:
    cfg = AgentConfig.model_validate({"cards": {"backend": "sim",
                                                "options": {"rate_per_min": 5}}})
    assert cfg.cards.options == SimCardOptions(rate_per_min=5.0)
    assert isinstance(AgentConfig().prompt.options, PromptOptions)   # defaults are typed too
    # "auto" takes no options; the backend it resolves to starts from its defaults
    assert options_for("cards", "pcsc", AgentConfig().cards.options).model_dump()["psam"] == "pcsc"


def test_the_registry_names_drivers_only() -> None:
    targets = [b.target for kind in BACKENDS.values() for b in kind.values() if b.target]
    assert targets and not [t for t in targets if t.startswith("simulator.")]


@pytest.mark.parametrize(("kind", "name", "options", "expected"), [
    ("cards", "sim", SimCardOptions(population_size=12, seed=1), "SimCardSource"),
    ("codes", "sim", SimCodeOptions(name="sim:test"), "SimCodeSource"),
])
def test_sources_are_built_from_their_options(kind: str, name: str, options: SimCardOptions,
                                              expected: str) -> None:
    source = load_source(kind, name).from_options(options,  # type: ignore[arg-type]
                                                  pseudonymizer=PSEUDO)
    assert isinstance(source, PresentationSource) and type(source).__name__ == expected
    if kind == "cards":
        made = Population.generate(12, seed=1)        # size and seed reached the source
        assert source.population.holders == made.holders  # type: ignore[attr-defined]


def test_actuators_are_built_from_their_options() -> None:
    prompt = load_actuator("prompt", "sim").from_options(PromptOptions(display_columns=8))
    assert isinstance(prompt, Actuator) and prompt.display_columns == 8  # type: ignore[attr-defined]


def test_a_missing_library_fails_only_when_its_backend_is_chosen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "smartcard", None)     # pyscard not installed
    monkeypatch.delitem(sys.modules, "drivers.pcsc", raising=False)
    cfg = AgentConfig.model_validate({"cards": {"backend": "pcsc",
                                                "options": {"reader": "ACS"}}})
    assert cfg.cards.options.model_dump()["reader"] == "ACS"   # validating needs no pyscard
    assert load_source("cards", "sim").__name__ == "SimCardSource"
    with pytest.raises(DriverUnavailable, match=r"yikatong-edge\[pcsc\]"):
        load_source("cards", "pcsc")


def test_a_test_not_marked_pcsc_reaches_no_pcscd() -> None:
    """The isolation of tests/fixtures/pcsc.py: in `make test` pcscd with its vpcd readers
    still runs here (test_card_pcsc started it), yet a demo's ``auto`` cards resolve to
    ``sim`` in this process, and a process this test starts lists no reader."""
    from drivers.registry import resolve_auto_cards
    from tests.fixtures.pcsc import NO_PCSCD_SOCKET

    assert resolve_auto_cards(demo=True) == "sim"
    out = subprocess.run(
        [sys.executable, "-c", "import os\nfrom smartcard.System import readers\n"
         "try:\n    print(len(readers()), os.environ['PCSCLITE_CSOCK_NAME'])\n"
         "except Exception as e:\n    print(0, os.environ['PCSCLITE_CSOCK_NAME'], type(e).__name__)"],
        capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split()[:2] == ["0", NO_PCSCD_SOCKET]
