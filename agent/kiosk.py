"""The service a visitor chose on a hall kiosk's keys, attached to their next tap (取号).

:class:`ServiceChoice` keeps the last key pressed (from the keypad's thread) and
:meth:`ServiceChoice.apply` gives it to the next presentation that has no service yet,
once: the next visitor starts from the default again. A choice older than ``hold_s``
seconds (monotonic) is forgotten — a visitor who pressed B and walked away does not
choose for the next one. The chosen service reaches the rules as ``service`` and is
journaled with the ticket. The keypad itself is a driver (:mod:`drivers.keypad`); the
daemon loads it by name and hands it to :meth:`ServiceChoice.start`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.model import Presentation

__all__ = ["ServiceChoice"]

log = logging.getLogger(__name__)


class KeypadLike(Protocol):
    def subscribe(self, listener: Callable[[Any], None]) -> None: ...

    def close(self) -> None: ...


class ServiceChoice:
    """The pending service choice of one kiosk. Thread-safe."""

    def __init__(self, *, hold_s: float = 30.0,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self._mono = mono
        self._lock = threading.Lock()
        self._pending: tuple[str, float] | None = None
        self.keypad: KeypadLike | None = None

    def start(self, section: Any, load: Callable[[str], Any]) -> None:
        """Open the keypad of config ``section`` (:class:`agent.config.KeypadSection`)
        through ``load`` (:func:`drivers.registry.load_keypad`), if it is enabled."""
        if not section.enabled:
            return
        self.hold_s = section.hold_s
        keypad: KeypadLike = load(section.backend).from_options(section.options)
        keypad.subscribe(lambda press: self.choose(press.service))
        self.keypad = keypad
        log.info("service keys: %s", ", ".join(getattr(keypad, "keys", ())))

    def close(self) -> None:
        """Close the keypad (safe twice)."""
        if self.keypad is not None:
            self.keypad.close()

    def choose(self, service: str) -> None:
        """A key was pressed: ``service`` is the choice from now."""
        with self._lock:
            self._pending = (service, self._mono())

    def apply(self, p: Presentation) -> Presentation:
        """``p`` with the pending choice as its service (consumed), if it has none."""
        if p.service:
            return p
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None or self._mono() - pending[1] > self.hold_s:
            return p
        return dataclasses.replace(p, service=pending[0])
