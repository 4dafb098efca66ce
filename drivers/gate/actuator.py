"""The gate as the daemon sees it: an :class:`~drivers.base.Actuator` that opens for
accepted decisions and reports what the visitor did.

:class:`Gate` is the protocol the daemon relies on for every gate actuator (events to
subscribe to, whether an open can succeed now, the emergency mode); :class:`GateActuator`
implements it on a :class:`~drivers.gate.serial_gate.SerialGate` (the ``serial`` and ``sim``
backends). Whether an accepted decision may stand when the gate cannot open is the
engine's call (``Engine(gate_ok=...)`` reads :attr:`Gate.available`): no fare is taken for
a gate that will not open.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from agent.model import Decision, JournalRecord
from drivers.base import Actuator
from drivers.gate.protocol import Direction, GateListener
from drivers.gate.serial_gate import SerialGate
from drivers.options import DriverOptions, GateOptions, expect

__all__ = ["Gate", "GateActuator"]

log = logging.getLogger(__name__)


@runtime_checkable
class Gate(Protocol):
    """An actuator that is a gate. The daemon subscribes to its events (journaled as they
    come), asks :attr:`available` before deciding, and switches every gate's emergency
    mode on a fire alarm."""

    name: str

    @property
    def available(self) -> bool:
        """True if an open can succeed now (in service, not in emergency mode)."""
        ...

    def subscribe(self, listener: GateListener) -> Callable[[], None]:
        """Call ``listener`` for every gate event; returns an unsubscribe."""
        ...

    def emergency(self, on: bool) -> None:
        """Open all ways (``on``) or release. Raises :class:`~drivers.exceptions.GateError`."""
        ...


class GateActuator(Actuator):
    """Opens ``gate`` in ``direction`` for ``open_ms`` ms on every accepted, journaled decision.

    ``act`` returns at once; the open runs on a worker thread and its outcome arrives as
    gate events (``OPENED`` then ``PASSED``/``TIMED_OUT``/``ABORTED``, or ``OPEN_FAILED``),
    each with the journal record's ``seq``.
    """

    name = "gate"

    def __init__(self, gate: SerialGate, *, direction: str | int = "in", open_ms: int = 5000,
                 owns_gate: bool = False) -> None:
        self.gate, self.direction, self.open_ms = gate, Direction.parse(direction), open_ms
        self._owns_gate = owns_gate
        self._work: queue.SimpleQueue[tuple[Decision, JournalRecord | None] | None] = (
            queue.SimpleQueue())
        self._worker = threading.Thread(target=self._run, name=f"{gate.name}-open", daemon=True)
        self._worker.start()
        self._closed = False

    @classmethod
    def from_backend(cls, backend: str, options: DriverOptions | None = None) -> GateActuator:
        """A gate of ``backend`` ("serial" or "sim") built from its validated options
        (``direction``, ``open_ms``, the line and timings), owned by the actuator.
        Raises :class:`ConfigError` for an unknown backend or options of another backend,
        :class:`~drivers.exceptions.GateError` if the line cannot be opened."""
        from drivers.registry import load_gate, options_for

        o = expect(options_for("gate", backend, options), GateOptions)
        gate = load_gate(backend).from_options(o)
        return cls(gate, direction=o.direction, open_ms=o.open_ms, owns_gate=True)

    @property
    def available(self) -> bool:
        return self.gate.available

    def subscribe(self, listener: GateListener) -> Callable[[], None]:
        return self.gate.subscribe(listener)

    def emergency(self, on: bool) -> None:
        self.gate.emergency(on)

    def act(self, decision: Decision, record: JournalRecord | None) -> None:
        if decision.accepted and not self._closed:
            self._work.put((decision, record))

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            record = item[1]
            seq = record.seq if record is not None else None
            try:
                self.gate.open(self.direction, self.open_ms, record_seq=seq)
            except Exception as err:
                log.warning("gate %s: open for record %s failed: %s", self.gate.name, seq, err)
                self.gate.report_open_failed(self.direction, seq, str(err))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._work.put(None)
        self._worker.join(2.0)
        if self._owns_gate:
            self.gate.close()
