"""Gate controller driver (turnstiles, flap barriers) over a framed serial protocol.

The controller (``firmware_stubs/gate_controller``) drives the barrier over RS-485/UART;
``docs/gate-protocol.md`` specifies the frames, commands, events and timings. The driver is
three modules and a sim backend:

* :mod:`drivers.gate.protocol`: the wire codec (frames, CRC, STATUS) and the events a gate
  reports (:class:`GateEvent`);
* :mod:`drivers.gate.serial_gate`: :class:`SerialGate`, the client of one controller on a
  serial line (reader, heartbeat and dispatcher threads);
* :mod:`drivers.gate.actuator`: the :class:`Gate` protocol the daemon relies on and
  :class:`GateActuator`, which opens the gate for accepted, journaled decisions;
* :mod:`drivers.gate.sim`: :class:`~drivers.gate.sim.SimGate`, a SerialGate on the
  host-built controller behind a pty (backend ``sim``).
"""

from drivers.gate.actuator import Gate, GateActuator
from drivers.gate.protocol import (
    Direction,
    Frame,
    FrameDecoder,
    GateEvent,
    GateEventKind,
    GateListener,
    GateStatus,
    crc16_ccitt_false,
    encode_frame,
)
from drivers.gate.serial_gate import SerialGate

__all__ = [
    "Direction", "Frame", "FrameDecoder", "Gate", "GateActuator", "GateEvent", "GateEventKind",
    "GateListener", "GateStatus", "SerialGate", "crc16_ccitt_false", "encode_frame",
]
