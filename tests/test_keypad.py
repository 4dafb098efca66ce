"""A hall kiosk's service keys (drivers/keypad.py, agent/kiosk.py): buttons on GPIO inputs
(gpiozero's mock pins, driven like real buttons) or the ``sim`` keypad choose the service
of the next tap; configured and validated like every driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.kiosk import ServiceChoice
from agent.model import Presentation, PresentationKind
from agent.tomlconf import ConfigFileError
from drivers.keypad import GpioKeypad, KeyPress, SimKeypad
from drivers.options import KeypadGpioOptions, KeypadSimOptions
from drivers.registry import load_keypad
from drivers.sim_cards import SimCardSource
from simulator.population import Population


def test_gpio_buttons_report_the_service_they_choose() -> None:
    pad = load_keypad("gpio").from_options(KeypadGpioOptions.model_validate(
        {"factory": "mock", "keys": {"A": {"pin": 5}, "B": {"pin": 6}}}))
    assert isinstance(pad, GpioKeypad)
    pressed: list[KeyPress] = []
    pad.subscribe(pressed.append)
    try:
        button = pad.board.mock_pin("B")
        button.drive_low()          # pull-up: pressed = low
        button.drive_high()         # released: no event
        assert [p.service for p in pressed] == ["B"]
    finally:
        pad.close()
        pad.close()


def test_the_sim_keypad_refuses_a_key_it_does_not_have() -> None:
    pad = SimKeypad.from_options(KeypadSimOptions())
    with pytest.raises(ValueError, match="no key 'Z'"):
        pad.press("Z")


def test_a_choice_goes_to_the_next_tap_only_and_expires() -> None:
    now = [100.0]
    choice = ServiceChoice(hold_s=30, mono=lambda: now[0])
    tap = Presentation(PresentationKind.CARD, "t", 0)
    choice.choose("B")
    assert choice.apply(tap).service == "B"
    assert choice.apply(tap).service == ""             # consumed
    choice.choose("C")
    now[0] += 31
    assert choice.apply(tap).service == ""             # walked away: forgotten


@pytest.mark.parametrize("options, error", [
    ('factory = "mock"\nkeys = { a = { pin = 5 } }', "keys"),
    ('factory = "mock"\nkeys = {}', "keys"),
    ('factory = "mock"\nkeys = { A = { pin = 5 } }\nrows = 4', "rows"),
])
def test_keypad_options_are_validated_at_load(tmp_path: Path, options: str, error: str
                                              ) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'[keypad]\nenabled = true\nbackend = "gpio"\n[keypad.options]\n{options}\n',
                    encoding="utf-8")
    with pytest.raises(ConfigFileError, match=error):
        load_config(path)


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[Terminal, SimCardSource, list[Outcome]]]:
    pop = Population.generate(10, seed=2)
    cfg = AgentConfig.model_validate({
        "terminal": {"id": "KIOSK-1", "profile": "service_kiosk",
                     "data_dir": str(tmp_path / "d"), "demo": True},
        "location": {"site": "hall-1"},
        "keypad": {"enabled": True, "backend": "gpio",
                   "options": {"factory": "mock",
                               "keys": {"A": {"pin": 5}, "B": {"pin": 6}, "C": {"pin": 13}}}},
        "mqtt": {"enabled": False},
    })
    terminal = Terminal(cfg)
    cards = SimCardSource(terminal.pseudonymizer, population=pop)
    terminal._sources_override = [cards]
    outcomes: list[Outcome] = []
    terminal.add_listener(outcomes.append)
    terminal.start()
    try:
        yield terminal, cards, outcomes
    finally:
        terminal.stop()


def test_the_service_key_pressed_before_a_tap_chooses_its_queue(
        kiosk: tuple[Terminal, SimCardSource, list[Outcome]]) -> None:
    terminal, cards, outcomes = kiosk
    pad = terminal.services.keypad
    assert isinstance(pad, GpioKeypad)
    holders = [h for h in cards.population if not h.hotlisted and "expired" not in h.tags]

    def tap(i: int) -> Outcome:
        n = len(outcomes)
        cards.tap(holders[i])
        assert terminal.drain(10)
        return outcomes[n]

    pad.board.mock_pin("B").drive_low()
    pad.board.mock_pin("B").drive_high()
    pension = tap(0)
    assert pension.decision.product == "queue_B" and pension.record is not None
    assert pension.record.body["service"] == "B" and pension.record.body["queue_no"] == "B001"
    assert pension.decision.prompt.text == "养老保险 B001号"
    default = tap(1)                                 # the next visitor pressed nothing
    assert default.decision.product == "queue_A"
