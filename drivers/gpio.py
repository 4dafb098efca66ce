"""GPIO peripherals through gpiozero: relays, LEDs, buzzers and inputs, pins from a profile.

The pin factory is chosen by name (the ``gpio`` kind of :mod:`drivers.registry`) and
imported only when chosen:

========== =========================================== ==============================
name       gpiozero factory                            where
========== =========================================== ==============================
``mock``   ``gpiozero.pins.mock.MockFactory``          tests, simulator (keeps history)
``lgpio``  ``gpiozero.pins.lgpio.LGPIOFactory``        Raspberry Pi 5 (and older)
``rpigpio````gpiozero.pins.rpigpio.RPiGPIOFactory``    older Pis (RPi.GPIO: not on a Pi 5)
``native`` ``gpiozero.pins.native.NativeFactory``      fallback, no extra library
========== =========================================== ==============================

A profile's ``[gpio]`` table::

    backend = "lgpio"
    [gpio.relays.gate]       pin = 17, active_high = true
    [gpio.leds.green]        pin = 27
    [gpio.buzzers.main]      pin = 22
    [gpio.inputs.passage]    pin = 5,  pull_up = true, bounce_ms = 10
    [gpio.inputs.fire_alarm] pin = 6,  pull_up = false, active_state = true
    [gpio.inputs.tamper]     pin = 13, pull_up = true

Outputs start off (``initial_value=False``) and toggle under a lock; timed actions
(``pulse``, ``play``) run on an injected :class:`Scheduler`, so tests drive time with
:class:`ManualScheduler` and the mock pins record that same clock: a test can assert
"relay closed for 3 s, then opened" with ``MockPin.assert_states_and_times`` in no time.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from drivers.exceptions import ConfigError, DriverUnavailable
from drivers.options import DriverOptions, GpioBoardOptions, GpioOptions, expect

__all__ = ["GpioBoard", "InputEvent", "ManualScheduler", "Output", "Scheduler",
           "SwitchInput", "ThreadScheduler", "make_pin_factory"]

log = logging.getLogger(__name__)

class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Runs ``fn`` after ``delay_s`` seconds; ``now()`` is its clock in seconds."""

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Cancellable: ...

    def now(self) -> float: ...


class ThreadScheduler:
    """Real time: ``threading.Timer`` (daemon) and ``time.monotonic``."""

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Cancellable:
        t = threading.Timer(max(0.0, delay_s), fn)
        t.daemon = True
        t.start()
        return t

    def now(self) -> float:
        return time.monotonic()


class ManualScheduler:
    """Fake time for tests and simulations: callbacks run only inside :meth:`advance`."""

    @dataclass(slots=True)
    class _Call:
        fn: Callable[[], None] | None

        def cancel(self) -> None:
            self.fn = None

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._queue: list[tuple[float, int, ManualScheduler._Call]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Cancellable:
        call = self._Call(fn)
        heapq.heappush(self._queue, (self._now + max(0.0, delay_s), next(self._ids), call))
        return call

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running due callbacks at their own times."""
        end = self._now + seconds
        while self._queue and self._queue[0][0] <= end:
            at, _, call = heapq.heappop(self._queue)
            self._now = max(self._now, at)
            if call.fn is not None:
                call.fn()
        self._now = end


def make_pin_factory(name: str, *, clock: Callable[[], float] | None = None) -> Any:
    """Create the gpiozero pin factory of GPIO backend ``name`` (see :mod:`drivers.registry`).

    For ``mock``, ``clock`` (seconds) timestamps the pins' state history, so
    :class:`ManualScheduler` time shows up in ``MockPin.states``. Raises
    :class:`ConfigError` for an unknown name and :class:`DriverUnavailable` when the
    factory's library (gpiozero, lgpio, RPi.GPIO) is missing or no GPIO chip is present.
    """
    from drivers.registry import load_pin_factory

    factory_class = load_pin_factory(name)
    if name == "mock" and clock is not None:
        mock = importlib.import_module(factory_class.__module__)
        return factory_class(pin_class=_clocked_mock_pin(mock, clock))
    try:
        return factory_class()
    except Exception as err:  # e.g. lgpio.error: no /dev/gpiochip0 here
        raise DriverUnavailable(f"GPIO backend {name!r} cannot start here: {err}") from err


def _clocked_mock_pin(mock: Any, clock: Callable[[], float]) -> type:
    class ClockedMockPin(mock.MockPin):  # type: ignore[misc, name-defined]
        """A MockPin whose history is timestamped by an injected clock."""

        _state: bool
        _last_change: float
        states: list[Any]

        def _change_state(self, value: bool) -> bool:
            if self._state != value:
                t = clock()
                self._state = value
                self.states.append(mock.PinState(t - self._last_change, value))
                self._last_change = t
                return True
            return False

        def clear_states(self) -> None:
            self._last_change = clock()
            self.states = [mock.PinState(0.0, self._state)]

    return ClockedMockPin


class Output:
    """A relay, LED or buzzer: off at start, ``on``/``off``/``pulse``/``play`` under a lock.

    ``kind`` is "relay", "led" or "buzzer"; ``active_high`` False for active-low boards.
    A new timed action cancels the one in progress.
    """

    def __init__(self, name: str, pin: int | str, *, kind: str, factory: Any,
                 scheduler: Scheduler, active_high: bool = True) -> None:
        from gpiozero import DigitalOutputDevice

        self.name, self.kind, self.pin = name, kind, pin
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._timer: Cancellable | None = None
        self._gen = 0
        try:
            self.device = DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                              pin_factory=factory)
        except Exception as err:
            raise ConfigError(f"gpio {kind} {name!r}: pin {pin!r}: {err}") from err

    @property
    def is_active(self) -> bool:
        return bool(self.device.value)

    def on(self) -> None:
        """Energise (relay closed, LED lit, buzzer sounding), cancelling any timed action."""
        with self._lock:
            self._cancel()
            self.device.on()

    def off(self) -> None:
        with self._lock:
            self._cancel()
            self.device.off()

    def pulse(self, seconds: float) -> None:
        """On now, off after ``seconds`` (e.g. a relay-driven barrier held open 3 s)."""
        self.play((int(round(seconds * 1000)),))

    def play(self, pattern_ms: tuple[int, ...]) -> None:
        """Play on/off durations in ms: ``(on, off, on, …)``; ends off. ``()`` turns it off."""
        with self._lock:
            self._cancel()   # a new generation: steps of the old pattern do nothing
            self._step(self._gen, tuple(pattern_ms), 0)

    def _step(self, gen: int, pattern: tuple[int, ...], i: int) -> None:
        # called with the lock held, or from the scheduler (which takes it)
        if gen != self._gen:
            return
        if i >= len(pattern):
            self.device.off()
            self._timer = None
            return
        if i % 2 == 0:
            self.device.on()
        else:
            self.device.off()
        self._timer = self._scheduler.call_later(pattern[i] / 1000.0,
                                                 lambda: self._locked_step(gen, pattern, i + 1))

    def _locked_step(self, gen: int, pattern: tuple[int, ...], i: int) -> None:
        with self._lock:
            self._step(gen, pattern, i)

    def _cancel(self) -> None:
        self._gen += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        with self._lock:
            self._cancel()
            try:
                self.device.off()
            except Exception:
                pass
            self.device.close()


@dataclass(frozen=True, slots=True)
class InputEvent:
    """An input changed: ``name`` (e.g. "passage", "fire_alarm", "tamper"), ``active``,
    ``at_ns`` = ``time.monotonic_ns()``."""

    name: str
    active: bool
    at_ns: int


InputListener = Callable[[InputEvent], None]


class SwitchInput:
    """A digital input (beam sensor, fire-alarm contact, tamper switch) with listeners.

    ``pull_up`` True/False enables that resistor; None (floating) needs ``active_state``.
    ``bounce_ms`` is the debounce time in milliseconds.
    """

    def __init__(self, name: str, pin: int | str, *, factory: Any, pull_up: bool | None = True,
                 active_state: bool | None = None, bounce_ms: float | None = None) -> None:
        from gpiozero import DigitalInputDevice

        self.name, self.pin = name, pin
        self._listeners: list[InputListener] = []
        try:
            self.device = DigitalInputDevice(
                pin, pull_up=pull_up, active_state=active_state, pin_factory=factory,
                bounce_time=None if bounce_ms is None else bounce_ms / 1000.0)
        except Exception as err:
            raise ConfigError(f"gpio input {name!r}: pin {pin!r}: {err}") from err
        self.device.when_activated = lambda: self._emit(True)
        self.device.when_deactivated = lambda: self._emit(False)

    @property
    def is_active(self) -> bool:
        return bool(self.device.is_active)

    def subscribe(self, listener: InputListener) -> None:
        self._listeners.append(listener)

    def _emit(self, active: bool) -> None:
        event = InputEvent(self.name, active, time.monotonic_ns())
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("gpio input %s: listener raised", self.name)

    def close(self) -> None:
        self.device.close()


class GpioBoard:
    """All GPIO peripherals of one terminal, built from a profile's ``[gpio]`` table.

    ``profile`` is validated as :class:`~drivers.options.GpioBoardOptions` (a mapping's
    ``backend`` defaults to ``mock``); ``pin_factory`` overrides its ``backend``;
    ``scheduler`` defaults to real time (:class:`ThreadScheduler`). Raises
    :class:`ConfigError` for bad keys, pins used twice or pins the factory rejects. Call :meth:`close` (safe twice) to release pins.
    """

    _OUTPUT_TABLES = {"relays": "relay", "leds": "led", "buzzers": "buzzer"}

    def __init__(self, profile: Mapping[str, Any] | GpioBoardOptions, *,
                 pin_factory: Any = None, scheduler: Scheduler | None = None) -> None:
        board = profile if isinstance(profile, GpioBoardOptions) else self._validate(profile)
        self.scheduler: Scheduler = scheduler or ThreadScheduler()
        self._owns_factory = pin_factory is None
        self.factory = pin_factory if pin_factory is not None else make_pin_factory(
            board.backend, clock=self.scheduler.now)
        self.outputs: dict[str, Output] = {}
        self.inputs: dict[str, SwitchInput] = {}
        self._closed = False
        used: dict[str, str] = {}
        try:
            for table, kind in self._OUTPUT_TABLES.items():
                for name, out in getattr(board, table).items():
                    pin = self._pin(out.pin, f"{table}.{name}", used)
                    self.outputs[name] = Output(name, pin, kind=kind, factory=self.factory,
                                                scheduler=self.scheduler,
                                                active_high=out.active_high)
            for name, inp in board.inputs.items():
                pin = self._pin(inp.pin, f"inputs.{name}", used)
                self.inputs[name] = SwitchInput(
                    name, pin, factory=self.factory, pull_up=inp.pull_up,
                    active_state=inp.active_state, bounce_ms=inp.bounce_ms)
        except Exception:
            self.close()
            raise

    @staticmethod
    def _validate(profile: Mapping[str, Any]) -> GpioBoardOptions:
        """A ``[gpio]`` table as :class:`GpioBoardOptions` (``backend`` defaults to mock);
        :class:`ConfigError` naming each bad key."""
        try:
            return GpioBoardOptions.model_validate({"backend": "mock", **profile})
        except ValidationError as err:
            problems = "; ".join(f"[gpio] {'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in err.errors())
            raise ConfigError(problems) from None

    @staticmethod
    def _pin(pin: int | str, where: str, used: dict[str, str]) -> int | str:
        key = f"GPIO{pin}" if isinstance(pin, int) else pin.upper()
        if key in used:
            raise ConfigError(f"[gpio.{where}] pin {pin} is already used by {used[key]}")
        used[key] = where
        return pin

    @classmethod
    def from_options(cls, backend: str, options: DriverOptions, *,
                     scheduler: Scheduler | None = None) -> GpioBoard:
        """The board of a ``[gpio]`` section: pin factory ``backend``, validated pins."""
        pins = expect(options, GpioOptions).model_dump()
        return cls(GpioBoardOptions.model_validate({"backend": backend, **pins}),
                   scheduler=scheduler)

    def relay(self, name: str) -> Output:
        return self._output(name, "relay")

    def led(self, name: str) -> Output:
        return self._output(name, "led")

    def buzzer(self, name: str = "main") -> Output:
        return self._output(name, "buzzer")

    def _output(self, name: str, kind: str) -> Output:
        out = self.outputs.get(name)
        if out is None or out.kind != kind:
            raise ConfigError(f"no gpio {kind} named {name!r} in the profile")
        return out

    def subscribe(self, listener: InputListener) -> None:
        """Call ``listener`` for every change of every input (from the GPIO thread)."""
        for inp in self.inputs.values():
            inp.subscribe(listener)

    def mock_pin(self, name: str) -> Any:
        """The MockPin behind output or input ``name`` (mock backend only), for tests."""
        dev = self.outputs[name].device if name in self.outputs else self.inputs[name].device
        return dev.pin

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        devices: list[Output | SwitchInput] = [*self.outputs.values(), *self.inputs.values()]
        for dev in devices:
            try:
                dev.close()
            except Exception:
                log.exception("closing gpio %s failed", dev.name)
        if self._owns_factory:
            self.factory.close()

    def __enter__(self) -> GpioBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
