"""GPIO devices on gpiozero's mock pins: relay timings, outputs, inputs, configuration."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from drivers.exceptions import ConfigError, DriverUnavailable
from drivers.gpio import GpioBoard, InputEvent, ManualScheduler, make_pin_factory
from drivers.registry import BACKENDS
from tests.fixtures.hub import wait_until

PROFILE = {
    "backend": "mock",
    "relays": {"gate": {"pin": 17, "active_high": True},
               "lock": {"pin": 18, "active_high": False}},
    "leds": {"green": {"pin": 27}, "red": {"pin": 23}},
    "buzzers": {"main": {"pin": 22}},
    "inputs": {"passage": {"pin": 5, "pull_up": True, "bounce_ms": 10},
               "fire_alarm": {"pin": 6, "pull_up": False},
               "tamper": {"pin": 13, "pull_up": None, "active_state": True}},
}


@pytest.fixture
def clock() -> ManualScheduler:
    return ManualScheduler()


@pytest.fixture
def board(clock: ManualScheduler) -> Iterator[GpioBoard]:
    b = GpioBoard(PROFILE, scheduler=clock)
    try:
        yield b
    finally:
        b.close()
        b.close()


def test_outputs_start_off_at_the_safe_level(board: GpioBoard) -> None:
    assert board.mock_pin("gate").state is False                 # active high: low = off
    assert board.mock_pin("lock").state is True                  # active low: high = off
    assert not any(o.is_active for o in board.outputs.values())


def test_relay_closed_for_3_s_then_opened(board: GpioBoard, clock: ManualScheduler) -> None:
    relay, pin = board.relay("gate"), board.mock_pin("gate")
    pin.clear_states()
    clock.advance(0.5)
    relay.pulse(3.0)
    assert relay.is_active
    clock.advance(2.9)
    assert relay.is_active
    clock.advance(0.2)
    assert not relay.is_active
    pin.assert_states_and_times([(0.0, False), (0.5, True), (3.0, False)])


def test_active_low_relay_and_a_new_pulse_restarts_the_timer(board: GpioBoard,
                                                             clock: ManualScheduler) -> None:
    relay, pin = board.relay("lock"), board.mock_pin("lock")
    pin.clear_states()
    relay.pulse(2.0)
    clock.advance(1.0)
    relay.pulse(2.0)              # extends: still closed, opens 2 s after the second pulse
    clock.advance(1.5)
    assert relay.is_active
    clock.advance(1.0)
    assert not relay.is_active
    pin.assert_states_and_times([(0.0, True), (0.0, False), (3.0, True)])


def test_off_cancels_a_pulse(board: GpioBoard, clock: ManualScheduler) -> None:
    relay = board.relay("gate")
    relay.pulse(3.0)
    relay.off()
    relay.on()
    clock.advance(10)
    assert relay.is_active          # the cancelled pulse's timer did not switch it off


def test_buzzer_plays_a_beep_pattern(board: GpioBoard, clock: ManualScheduler) -> None:
    pin = board.mock_pin("main")
    pin.clear_states()
    board.buzzer().play((80, 60, 80))
    clock.advance(1.0)
    pin.assert_states_and_times([(0.0, False), (0.0, True), (0.08, False), (0.06, True),
                                 (0.08, False)])
    assert len(pin.states) == 5


def test_led_blink_with_real_time() -> None:
    """The default ThreadScheduler really switches the output off: its timer fires."""
    with GpioBoard({"backend": "mock", "leds": {"green": {"pin": 27}}}) as b:
        led, pin = b.led("green"), b.mock_pin("green")
        pin.clear_states()
        led.pulse(0.1)
        assert led.is_active
        wait_until(lambda: not led.is_active, 5, "the pulse's timer to switch the LED off")
        assert [s.state for s in pin.states] == [False, True, False]


@pytest.mark.expect_log("drivers.gpio", r"gpio input (passage|fire_alarm|tamper): listener raised")
def test_inputs_report_changes(board: GpioBoard) -> None:
    events: list[InputEvent] = []
    board.subscribe(events.append)
    def broken(event: InputEvent) -> None:
        raise RuntimeError(f"listener bug on {event.name}")

    board.subscribe(broken)                       # a bad listener is logged, not fatal
    beam = board.mock_pin("passage")
    beam.drive_low()                              # pull-up input: low = beam broken = active
    beam.drive_high()
    board.mock_pin("fire_alarm").drive_high()
    board.mock_pin("tamper").drive_high()
    assert [(e.name, e.active) for e in events] == [
        ("passage", True), ("passage", False), ("fire_alarm", True), ("tamper", True)]
    assert board.inputs["fire_alarm"].is_active


@pytest.mark.parametrize(("profile", "message"), [
    ({"relays": {"a": {"pin": 17}, "b": {"pin": "GPIO17"}}}, "already used"),
    ({"relays": {"a": {}}}, r"\[gpio\] relays\.a\.pin: Field required"),
    ({"relays": {"a": {"pin": 17, "colour": "red"}}},
     r"\[gpio\] relays\.a\.colour: Extra inputs are not permitted"),
    ({"sirens": {}}, r"\[gpio\] sirens: Extra inputs are not permitted"),
    ({"relays": {"a": {"pin": 999}}}, "pin 999"),
    ({"inputs": {"x": {"pin": 5, "pull_up": None}}}, "input 'x'"),
])
def test_bad_profiles_are_config_errors(profile: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GpioBoard({"backend": "mock", **profile})


def test_unknown_output_name(board: GpioBoard) -> None:
    with pytest.raises(ConfigError, match="no gpio relay named 'green'"):
        board.relay("green")


def test_pin_factories_are_chosen_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown gpio backend 'wiringpi'"):
        make_pin_factory("wiringpi")
    factory = make_pin_factory("mock")
    assert type(factory).__name__ == "MockFactory"
    factory.close()


@pytest.mark.parametrize("name", ["lgpio", "rpigpio", "native"])
def test_a_pin_factory_whose_library_is_missing_is_driver_unavailable(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = BACKENDS["gpio"][name].target.partition(":")[0]
    monkeypatch.setitem(sys.modules, module, None)      # importing it now raises ImportError
    with pytest.raises(DriverUnavailable, match=rf"gpio backend '{name}'.*yikatong-edge\[gpio\]"):
        make_pin_factory(name)


def test_injected_factory_is_not_closed_by_the_board(clock: ManualScheduler) -> None:
    factory = make_pin_factory("mock", clock=clock.now)
    with GpioBoard({"relays": {"a": {"pin": 4}}}, pin_factory=factory, scheduler=clock) as b:
        b.relay("a").on()
    pin = factory.pin(4)   # still usable: the board released its devices only
    assert pin.state is False
    factory.close()
