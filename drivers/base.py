"""Interfaces every driver implements.

Two kinds of device meet the agent:

* a :class:`PresentationSource` (card reader, camera, serial scanner, simulator) pushes
  :class:`~agent.model.Presentation` events to a sink (the agent's queue) from its own
  thread; the public ``start``/``stop`` own threading and error handling, a backend
  overrides ``_run`` (the blocking loop) and, if it needs to, ``_close``;
* an :class:`Actuator` (prompt display/beeper, GPIO relay, gate controller) acts on a
  journaled decision.

:class:`Debouncer` is shared by the code readers (camera, serial scanner).

``stop()``/``close()`` are safe to call twice; both are context managers.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from agent.model import Decision, JournalRecord, Presentation, Prompt
from agent.pseudonym import Pseudonymizer
from drivers.exceptions import ConfigError
from drivers.options import DriverOptions

__all__ = ["Actuator", "Debouncer", "PresentationSink", "PresentationSource"]

log = logging.getLogger(__name__)

PresentationSink = Callable[[Presentation], None]


class Debouncer:
    """Suppresses a text seen again within ``window_s`` seconds of its last sighting."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self._last: dict[str, int] = {}

    def fresh(self, text: str, now_ns: int) -> bool:
        """True if ``text`` should be emitted now; records the sighting either way."""
        last = self._last.get(text)
        self._last[text] = now_ns
        if len(self._last) > 256:
            cutoff = now_ns - self.window_ns
            self._last = {t: n for t, n in self._last.items() if n >= cutoff}
        return last is None or now_ns - last > self.window_ns


class PresentationSource(abc.ABC):
    """A device that produces presentations. Subclasses implement :meth:`_run`."""

    #: short name of the device for logs and ``Presentation.source``
    name: str = "source"

    def __init__(self) -> None:
        self._sink: PresentationSink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_options(cls, options: DriverOptions, *,
                     pseudonymizer: Pseudonymizer) -> PresentationSource:
        """Build from this backend's validated options (its model is named in
        :mod:`drivers.registry`); ``pseudonymizer`` keys what a card source reads.
        Raises :class:`ConfigError` for a source that cannot be configured from a file."""
        raise ConfigError(f"{cls.__name__} cannot be configured from a file")

    # -- public API -----------------------------------------------------------------
    def start(self, sink: PresentationSink) -> None:
        """Start delivering presentations to ``sink`` from a background thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._guarded_run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the source and wait up to ``timeout`` seconds for its thread. Safe twice."""
        self._stop.set()
        try:
            self._close()
        except Exception:
            log.exception("closing %s failed", self.name)
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning("%s did not stop within %.1f s", self.name, timeout)
                return                 # still using its resources: leave them be
        try:
            self._release()
        except Exception:
            log.exception("releasing %s failed", self.name)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def emit(self, presentation: Presentation) -> None:
        """Deliver one presentation; a sink that raises is logged, never kills the source."""
        sink = self._sink
        if sink is None:
            return
        try:
            sink(presentation)
        except Exception:
            log.exception("presentation sink raised for %s", self.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- backend primitives -----------------------------------------------------------
    @abc.abstractmethod
    def _run(self) -> None:
        """Blocking loop: watch the device until ``self.stopping``; call :meth:`emit`."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the device (wake ``_run`` if it is blocked). Called from :meth:`stop`."""

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Free what the thread shared with other threads, once it has ended. Called from
        :meth:`stop` after the join (not at all if the thread did not end in time)."""

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s stopped on an unexpected error", self.name)


class Actuator(abc.ABC):
    """A device that acts on a journaled decision (prompt, relay, gate)."""

    name: str = "actuator"

    @classmethod
    def from_options(cls, options: DriverOptions) -> Actuator:
        """Build from this backend's validated options (see :mod:`drivers.registry`).
        Raises :class:`ConfigError` for an actuator that cannot be configured from a file."""
        raise ConfigError(f"{cls.__name__} cannot be configured from a file")

    @abc.abstractmethod
    def act(self, decision: Decision, record: JournalRecord | None) -> None:
        """Act on ``decision`` (already durably journaled as ``record``; None if not journaled).

        Must return quickly (start a timer rather than sleep); errors are logged by the agent.
        """

    def failsafe(self, prompt: Prompt) -> None:  # noqa: B027 - optional hook
        """Nothing could be journaled (a full or broken disk): tell the rider ``prompt``
        ("设备故障 请稍后"). Never opens, charges or records anything; a gate stays shut.
        Displays override it; the default does nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
