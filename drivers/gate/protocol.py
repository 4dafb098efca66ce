"""The gate controller's wire protocol and the events a gate driver reports.

``docs/gate-protocol.md`` specifies the frames: HDLC-style flags and byte stuffing, a
CRC-16/CCITT-FALSE over the body, commands with their responses, and events the controller
sends until acknowledged. This module is the codec only (no I/O): :func:`encode_frame`,
the streaming :class:`FrameDecoder`, the STATUS answer (:class:`GateStatus`), and the
host-side event vocabulary (:class:`GateEvent`) that :class:`drivers.gate.serial_gate.SerialGate`
emits and the daemon journals.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from drivers.exceptions import ConfigError, GateError

__all__ = [
    "ALARMS", "CMD_CLOSE", "CMD_EMERGENCY", "CMD_EVENT_ACK", "CMD_OPEN", "CMD_REBOOT",
    "CMD_STATUS", "EVT_ALARM", "EVT_BOOT", "EVT_EMERGENCY", "EVT_PASSAGE", "EVT_TIMEOUT",
    "OPEN_MAX_MS", "OPEN_MIN_MS", "RESULTS", "RSP", "TIMEOUT_WHY", "Direction", "Frame",
    "FrameDecoder", "GateEvent", "GateEventKind", "GateListener", "GateStatus",
    "crc16_ccitt_false", "encode_frame",
]

# -- protocol constants (docs/gate-protocol.md) ------------------------------------------
FLAG, ESC, ESC_XOR, VERSION, MAX_PAYLOAD = 0x7E, 0x7D, 0x20, 0x01, 32
CMD_STATUS, CMD_OPEN, CMD_CLOSE, CMD_EMERGENCY, CMD_REBOOT, CMD_EVENT_ACK = 2, 3, 4, 5, 6, 7
RSP = 0x80
OPEN_MIN_MS, OPEN_MAX_MS = 100, 60000
EVT_BOOT, EVT_PASSAGE, EVT_TIMEOUT, EVT_ALARM, EVT_EMERGENCY = 0xC0, 0xC1, 0xC2, 0xC3, 0xC4
RESULTS = {0: "ok", 1: "busy", 2: "emergency", 3: "bad parameter", 4: "fault",
           5: "unknown command", 6: "bad length"}
STATES = {0: "closed", 1: "open", 2: "emergency"}
ALARMS = {1: "forced", 2: "tamper", 3: "fire"}
TIMEOUT_WHY = {0: "no passage", 1: "emergency", 2: "closed by command"}



class Direction(enum.IntEnum):
    IN = 1
    OUT = 2

    @classmethod
    def parse(cls, value: str | int | Direction) -> Direction:
        """``"in"``/``"out"`` (or 1/2) → Direction; raises :class:`ConfigError` otherwise."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ConfigError(f"gate direction must be 'in' or 'out', got {value!r}") from None
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"gate direction must be 1 (in) or 2 (out), got {value!r}") from None


def crc16_ccitt_false(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection; ``b"123456789"`` → 0x29B1."""
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode_frame(seq: int, ftype: int, payload: bytes = b"") -> bytes:
    """One frame on the wire: flag, escaped body + CRC, flag. Raises ValueError if too long."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes((VERSION, seq & 0xFF, ftype & 0xFF, len(payload))) + payload
    body += crc16_ccitt_false(body).to_bytes(2, "big")
    out = bytearray((FLAG,))
    for b in body:
        out += bytes((ESC, b ^ ESC_XOR)) if b in (FLAG, ESC) else bytes((b,))
    out.append(FLAG)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    type: int
    payload: bytes


class FrameDecoder:
    """Streaming decoder: bytes in, valid frames out; bad CRCs and torn frames are counted."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = self._escaped = False
        self.crc_errors = 0
        self.bad_frames = 0

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        for b in data:
            if b == FLAG:
                if self._in_frame and (self._buf or self._escaped):
                    frame = self._finish()
                    if frame is not None:
                        frames.append(frame)
                self._buf.clear()
                self._in_frame, self._escaped = True, False
            elif not self._in_frame:
                continue
            elif b == ESC:
                self._escaped = True
            else:
                self._buf.append(b ^ ESC_XOR if self._escaped else b)
                self._escaped = False
                if len(self._buf) > MAX_PAYLOAD + 6:
                    self.bad_frames += 1
                    self._buf.clear()
                    self._in_frame = False
        return frames

    def _finish(self) -> Frame | None:
        body = bytes(self._buf)
        if self._escaped or len(body) < 6:
            self.bad_frames += 1
            return None
        if crc16_ccitt_false(body[:-2]) != int.from_bytes(body[-2:], "big"):
            self.crc_errors += 1
            return None
        if body[0] != VERSION or body[3] + 6 != len(body):
            self.bad_frames += 1
            return None
        return Frame(body[1], body[2], body[4:-2])


@dataclass(frozen=True, slots=True)
class GateStatus:
    """The controller's STATUS answer. ``remaining_ms``/``uptime_ms`` in milliseconds."""

    boot_id: int
    state: str                 # "closed" | "open" | "emergency"
    direction: int
    token: int
    remaining_ms: int
    fire_alarm: bool
    tamper: bool
    host_emergency: bool
    pending_events: int
    crc_errors: int
    uptime_ms: int

    @classmethod
    def parse(cls, p: bytes) -> GateStatus:
        if len(p) != 17:
            raise GateError(f"STATUS payload of {len(p)} bytes, expected 17")
        return cls(int.from_bytes(p[1:3], "big"), STATES.get(p[3], f"unknown({p[3]})"), p[4],
                   int.from_bytes(p[5:7], "big"), int.from_bytes(p[7:9], "big"),
                   bool(p[9] & 1), bool(p[9] & 2), bool(p[9] & 4), p[10],
                   int.from_bytes(p[11:13], "big"), int.from_bytes(p[13:17], "big"))


class GateEventKind(enum.StrEnum):
    OPENED = "opened"                  # controller acknowledged OPEN
    OPEN_FAILED = "open_failed"        # OPEN refused or unanswered: the visitor did not enter
    PASSED = "passed"                  # passage completed
    TIMED_OUT = "timed_out"            # closed without passage (or by emergency/CLOSE): not entered
    ABORTED = "aborted"                # controller rebooted/stopped answering while open
    ALARM = "alarm"                    # forced passage, tamper, fire (``alarm``, ``active``)
    EMERGENCY = "emergency"            # all ways open (``active``), e.g. fire alarm
    REBOOTED = "rebooted"
    OUT_OF_SERVICE = "out_of_service"
    IN_SERVICE = "in_service"


@dataclass(frozen=True, slots=True)
class GateEvent:
    """Something the gate reported. ``record_seq`` is the journal seq of the decision whose
    open this event ends (None if unknown); ``at_ns`` is ``time.monotonic_ns()``."""

    kind: GateEventKind
    at_ns: int
    gate: str = ""
    direction: str = ""
    token: int | None = None
    record_seq: int | None = None
    alarm: str = ""
    active: bool | None = None
    elapsed_ms: int | None = None
    detail: str = ""


GateListener = Callable[[GateEvent], None]
