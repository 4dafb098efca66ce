"""Service keys at a hall kiosk (取号机): the visitor presses a service, then taps the card.

A :class:`Keypad` reports :class:`KeyPress` events (the service the key chooses) to its
subscribers; the agent (:mod:`agent.kiosk`) attaches the last choice to the next
presentation. Backends (the ``keypad`` kind of :mod:`drivers.registry`):

========= ============================================================================
``sim``   :class:`SimKeypad`: :meth:`SimKeypad.press` from a test or the demo
``gpio``  :class:`GpioKeypad`: one push button per service on a GPIO input (gpiozero,
          any pin factory; ``mock`` in tests, whose pins are driven like real buttons)
========= ============================================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.exceptions import ConfigError
from drivers.options import (
    DriverOptions,
    GpioBoardOptions,
    KeypadGpioOptions,
    KeypadSimOptions,
    expect,
)

__all__ = ["GpioKeypad", "KeyPress", "Keypad", "SimKeypad"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyPress:
    """A service key was pressed: ``service`` (e.g. "A"), ``at_ns`` = monotonic ns."""

    service: str
    at_ns: int


KeyListener = Callable[[KeyPress], None]


class Keypad:
    """Base of the keypad backends: listeners, :meth:`close` (safe twice)."""

    def __init__(self, keys: list[str], name: str) -> None:
        self.keys = tuple(keys)
        self.name = name
        self._listeners: list[KeyListener] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_options(cls, options: DriverOptions) -> Keypad:
        raise NotImplementedError

    def subscribe(self, listener: KeyListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _emit(self, service: str) -> None:
        event = KeyPress(service, time.monotonic_ns())
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(event)
            except Exception:
                log.exception("keypad %s: listener raised", self.name)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def _close(self) -> None:
        """Release the device (backends override)."""


class SimKeypad(Keypad):
    """The ``sim`` keypad: :meth:`press` is a button press."""

    @classmethod
    def from_options(cls, options: DriverOptions) -> SimKeypad:
        return cls(expect(options, KeypadSimOptions).keys, "sim:keypad")

    def press(self, service: str) -> None:
        """Press the key of ``service``; ``ConfigError`` if the keypad has none."""
        if service not in self.keys:
            raise ConfigError(f"keypad has no key {service!r} (keys: {', '.join(self.keys)})")
        self._emit(service)


class GpioKeypad(Keypad):
    """Push buttons on GPIO inputs (:class:`drivers.gpio.GpioBoard`), one per service; a
    press is the input becoming active. Raises :class:`ConfigError` for a bad or shared
    pin and ``DriverUnavailable`` without gpiozero or a GPIO chip."""

    def __init__(self, options: KeypadGpioOptions, *, pin_factory: object = None) -> None:
        from drivers.gpio import GpioBoard, InputEvent

        super().__init__(list(options.keys), f"gpio:keypad:{options.factory}")
        self.board = GpioBoard(GpioBoardOptions(backend=options.factory,
                                                inputs=dict(options.keys)),
                               pin_factory=pin_factory)

        def on_input(ev: InputEvent) -> None:
            if ev.active:
                self._emit(ev.name)

        self.board.subscribe(on_input)

    @classmethod
    def from_options(cls, options: DriverOptions) -> GpioKeypad:
        return cls(expect(options, KeypadGpioOptions))

    def _close(self) -> None:
        self.board.close()
