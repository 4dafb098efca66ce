"""Gate controller driver: the agent's side of the framed serial protocol.

The controller (``firmware_stubs/gate_controller``) drives a turnstile or flap barrier over
RS-485/UART; ``docs/gate-protocol.md`` specifies the frames (HDLC-style flags, CRC-16/
CCITT-FALSE), commands, events and timings. :class:`SerialGate` opens the line with
``serial.serial_for_url`` (a device, a pty, or ``loop://``) and runs three threads:

* a reader that decodes frames, matches responses to requests, acknowledges events and
  drops frames with bad CRCs or torn frames (counted in :attr:`SerialGate.line_errors`).
  Everything the controller reports — events, STATUS answers (boot id, emergency),
  acknowledged OPENs — is applied here, in the order it came off the line, so an
  ``OPENED`` always precedes the ``PASSED`` of the same open and a STATUS answered before
  a reboot can never be taken for one from after it;
* a heartbeat that asks for STATUS every ``heartbeat_s``: after ``fail_after`` missed
  answers the gate is **out of service** (:attr:`SerialGate.in_service` False, an
  ``OUT_OF_SERVICE`` event) until it answers again; a new ``boot_id`` means the controller
  rebooted (``REBOOTED``; opens in flight end as ``ABORTED``);
* a dispatcher that calls subscribers with :class:`GateEvent`; a subscriber that raises
  is logged and never stops the others.

:class:`GateActuator` adapts a gate to :class:`~drivers.base.Actuator`: it opens the gate
for accepted decisions (on its own worker thread, so ``act`` returns at once), and
:meth:`GateActuator.guard` turns an accepted decision into a ``GATE_OUT_OF_SERVICE`` denial
when the gate cannot open, so no fare is taken for a gate that will not open.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import serial

from agent.model import Decision, JournalRecord, Prompt, Reason
from drivers.base import Actuator
from drivers.exceptions import ConfigError, GateError

__all__ = [
    "Direction", "Frame", "FrameDecoder", "GateActuator", "GateEvent", "GateEventKind",
    "GateListener", "GateStatus", "OUT_OF_SERVICE_PROMPT", "SerialGate", "crc16_ccitt_false",
    "encode_frame",
]

log = logging.getLogger(__name__)

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

OUT_OF_SERVICE_PROMPT = Prompt(text="闸机故障 请走人工通道", sound="error", voice="gate_out_of_service")


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


@dataclass(slots=True)
class _Open:
    token: int
    direction: Direction
    record_seq: int | None
    opened: bool = False           # the controller acknowledged it (OPENED reported)
    aborted: bool = False          # ABORTED already reported (controller went silent)


class SerialGate:
    """Client of one gate controller on a serial line.

    ``url`` is anything ``serial.serial_for_url`` accepts. Times are in seconds:
    ``response_timeout_s`` per attempt, ``retries`` extra attempts per request,
    ``heartbeat_s`` between STATUS polls, ``fail_after`` consecutive failed requests before
    the gate is out of service. The constructor never raises for a silent controller (the
    gate just starts out of service); it raises :class:`GateError` if ``url`` cannot be
    opened and ``require_port`` is True.
    """

    def __init__(self, url: str, *, name: str = "gate", baudrate: int = 115200,
                 response_timeout_s: float = 0.2, retries: int = 2, heartbeat_s: float = 0.5,
                 fail_after: int = 2, reconnect_s: float = 0.5, require_port: bool = True,
                 serial_factory: Callable[..., Any] = serial.serial_for_url) -> None:
        if response_timeout_s <= 0 or heartbeat_s <= 0 or retries < 0 or fail_after < 1:
            raise ConfigError("gate timings must be positive (response_timeout_s, heartbeat_s, "
                              "fail_after >= 1, retries >= 0)")
        self.url, self.name, self.baudrate = url, name, baudrate
        self.response_timeout_s, self.retries = response_timeout_s, retries
        self.heartbeat_s, self.fail_after, self.reconnect_s = heartbeat_s, fail_after, reconnect_s
        self._factory = serial_factory
        self._lock = threading.Lock()           # state below
        self._write_lock = threading.Lock()
        self._port: Any = None
        self._decoder = FrameDecoder()
        self._seq = 0
        self._token = int.from_bytes(os.urandom(2), "big")
        self._pending: dict[int, tuple[threading.Event, list[Frame]]] = {}
        self._opens: dict[int, _Open] = {}
        self._boot_id: int | None = None
        self._last_evseq: int | None = None
        self._failures = 0
        self._in_service = False
        self._emergency = False
        self.last_status: GateStatus | None = None
        self._listeners: list[GateListener] = []
        self._events: queue.SimpleQueue[GateEvent | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        try:
            self._open_port()
        except GateError:
            if require_port:
                raise
        self._threads = [threading.Thread(target=fn, name=f"{name}-{fn.__name__}", daemon=True)
                         for fn in (self._reader, self._heartbeat, self._dispatcher)]
        for t in self._threads:
            t.start()

    # -- public API -------------------------------------------------------------------
    @property
    def in_service(self) -> bool:
        """True while the controller answers (and the line is open)."""
        return self._in_service

    @property
    def available(self) -> bool:
        """True if an OPEN can succeed now: in service and not in emergency mode."""
        return self._in_service and not self._emergency

    @property
    def line_errors(self) -> tuple[int, int]:
        """(frames dropped for a bad CRC, torn/malformed frames dropped) on our receive side."""
        return self._decoder.crc_errors, self._decoder.bad_frames

    def subscribe(self, listener: GateListener) -> Callable[[], None]:
        """Call ``listener`` (on the dispatcher thread) for every event; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block up to ``timeout`` s until the gate is in service; returns whether it is."""
        deadline = time.monotonic() + timeout
        while not self._in_service and time.monotonic() < deadline and not self._stop.is_set():
            try:
                self.status()
            except GateError:
                self._stop.wait(0.02)
        return self._in_service

    def status(self) -> GateStatus:
        """Ask the controller for its status. Raises :class:`GateError` if it does not answer.

        The reader has already applied the answer (service state, boot id, emergency)."""
        return GateStatus.parse(self._request(CMD_STATUS).payload)

    def open(self, direction: str | int | Direction, duration_ms: int, *,
             record_seq: int | None = None) -> int:
        """Open for one passage in ``direction`` for at most ``duration_ms`` ms (100–60000).

        Returns the open's token once the controller acknowledged it; the open ends with a
        ``PASSED``, ``TIMED_OUT`` or ``ABORTED`` event carrying ``record_seq``. Raises
        :class:`GateError` if the controller refuses (busy, emergency) or does not answer,
        :class:`ConfigError` for a bad direction or duration.
        """
        d = Direction.parse(direction)
        if not OPEN_MIN_MS <= duration_ms <= OPEN_MAX_MS:
            raise ConfigError(f"open duration must be {OPEN_MIN_MS}..{OPEN_MAX_MS} ms, "
                              f"got {duration_ms}")
        with self._lock:
            self._token = (self._token + 1) & 0xFFFF
            token = self._token
            self._opens[token] = _Open(token, d, record_seq)
        payload = bytes((d,)) + duration_ms.to_bytes(2, "big") + token.to_bytes(2, "big")
        try:
            self._check(self._request(CMD_OPEN, payload), "to open")
        except GateError:
            with self._lock:
                self._opens.pop(token, None)
            raise
        return token   # the reader reported OPENED when the acknowledgement came in

    def close_barrier(self) -> None:
        """Close now (an open in progress ends with ``TIMED_OUT``). Raises GateError."""
        self._check(self._request(CMD_CLOSE), "to close")

    def emergency(self, on: bool) -> None:
        """Open all ways (fire alarm from the terminal's own input) or release. Raises GateError."""
        self._check(self._request(CMD_EMERGENCY, b"\x01" if on else b"\x00"), "the emergency")

    def reboot(self) -> None:
        """Ask the controller to reboot (it answers first). Raises GateError."""
        self._check(self._request(CMD_REBOOT), "to reboot")

    def close(self) -> None:
        """Stop the threads and close the port. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._events.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2.0)
        self._close_port()

    def __enter__(self) -> SerialGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------
    def _check(self, rsp: Frame, what: str) -> None:
        code = rsp.payload[0] if rsp.payload else 0xFF
        if code != 0:
            raise GateError(f"gate refused {what}: {RESULTS.get(code, code)}", device=self.url,
                            code=code)

    def _request(self, ftype: int, payload: bytes = b"") -> Frame:
        for attempt in range(self.retries + 1):
            done, box = threading.Event(), list[Frame]()
            with self._lock:
                self._seq = (self._seq + 1) & 0xFF
                seq = self._seq
                self._pending[seq] = (done, box)
            try:
                self._write(encode_frame(seq, ftype, payload))
                if done.wait(self.response_timeout_s):
                    with self._lock:
                        self._failures = 0
                    return box[0]
                log.debug("gate %s: no answer to 0x%02X (attempt %d)", self.name, ftype, attempt + 1)
            except GateError as err:
                log.debug("gate %s: write failed: %s", self.name, err)
                self._stop.wait(self.response_timeout_s)
            finally:
                with self._lock:
                    self._pending.pop(seq, None)
        self._note_failure()
        raise GateError(f"gate controller did not answer command 0x{ftype:02X}", device=self.url)

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            port = self._port
            if port is None:
                raise GateError("serial line is not open", device=self.url)
            try:
                port.write(data)
            except (serial.SerialException, OSError) as err:
                raise GateError(f"writing to the gate failed: {err}", device=self.url) from err

    # -- service state ------------------------------------------------------------------
    # Service transitions are emitted under ``_lock`` so listeners see them in the order
    # the state changed (a failing request thread and the reader can race otherwise).
    # Only acknowledged opens are aborted: one still in flight fails (OPEN_FAILED) or is
    # retried against the rebooted controller.
    def _note_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if not (self._in_service and self._failures >= self.fail_after):
                return
            self._in_service = False
            log.warning("gate %s out of service: controller not answering on %s", self.name, self.url)
            self._emit(GateEventKind.OUT_OF_SERVICE, detail="controller not answering")
            for o in self._opens.values():
                if o.opened and not o.aborted:
                    o.aborted = True   # kept: a late PASSED/TIMED_OUT still names its record
                    self._emit_open_end(GateEventKind.ABORTED, o,
                                        detail="controller stopped answering")

    def _note_status(self, st: GateStatus) -> None:
        """A STATUS answer (reader thread): in service, emergency, boot id."""
        self.last_status = st
        with self._lock:
            self._emergency = st.state == "emergency"
            if not self._in_service:
                self._in_service = True
                log.info("gate %s in service (boot %04X)", self.name, st.boot_id)
                self._emit(GateEventKind.IN_SERVICE, detail=f"boot {st.boot_id:04X}")
        self._note_boot(st.boot_id)

    def _note_boot(self, boot_id: int) -> None:
        """A boot id seen in STATUS or BOOT (reader thread)."""
        with self._lock:
            old = self._boot_id
            if old == boot_id:
                return
            self._boot_id, self._last_evseq = boot_id, None
            if old is None:
                return
            log.warning("gate %s rebooted (boot %04X → %04X)", self.name, old, boot_id)
            self._emit(GateEventKind.REBOOTED, detail=f"boot {boot_id:04X}")
            for token, o in list(self._opens.items()):
                if o.opened:   # a reset controller is closed and has forgotten it
                    del self._opens[token]
                    self._emit_open_end(GateEventKind.ABORTED, o, detail="controller rebooted")

    def _note_opened(self, token: int) -> None:
        """The controller acknowledged OPEN ``token`` (reader thread): report OPENED once."""
        with self._lock:
            o = self._opens.get(token)
            if o is not None and not o.opened:
                o.opened = True
                self._emit(GateEventKind.OPENED, direction=o.direction.name.lower(),
                           token=token, record_seq=o.record_seq)

    # -- threads --------------------------------------------------------------------------
    def _open_port(self) -> None:
        try:
            port = self._factory(self.url, baudrate=self.baudrate, timeout=0.05, write_timeout=0.5)
        except (serial.SerialException, OSError, ValueError) as err:
            raise GateError(f"cannot open gate line: {err}", device=self.url) from err
        with self._write_lock:
            self._port = port
        self._decoder = FrameDecoder()

    def _close_port(self) -> None:
        with self._write_lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:
                log.exception("closing gate line %s failed", self.url)

    def _reader(self) -> None:
        while not self._stop.is_set():
            port = self._port
            if port is None:
                if self._stop.wait(self.reconnect_s):
                    return
                try:
                    self._open_port()
                    log.info("gate %s: reopened %s", self.name, self.url)
                except GateError as err:
                    log.debug("gate %s: %s", self.name, err)
                continue
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                if self._stop.is_set():
                    return
                log.warning("gate %s: line failed (%s); reconnecting", self.name, err)
                self._close_port()
                continue
            for frame in self._decoder.feed(data):
                try:
                    self._on_frame(frame)
                except Exception:
                    log.exception("gate %s: bad frame 0x%02X", self.name, frame.type)

    def _on_frame(self, f: Frame) -> None:
        if f.type >= EVT_BOOT:
            self._on_event(f)
            return
        if not f.type & RSP:
            return
        if f.type == CMD_STATUS | RSP:
            try:
                self._note_status(GateStatus.parse(f.payload))
            except GateError as err:   # still answered below: status() raises it
                log.warning("gate %s: %s", self.name, err)
        elif f.type == CMD_OPEN | RSP and len(f.payload) >= 3 and f.payload[0] == 0:
            self._note_opened(int.from_bytes(f.payload[1:3], "big"))
        with self._lock:
            slot = self._pending.get(f.seq)
        if slot is not None and not slot[0].is_set():
            slot[1].append(f)
            slot[0].set()

    def _on_event(self, f: Frame) -> None:
        try:
            self._write(encode_frame(0, CMD_EVENT_ACK, bytes((f.seq,))))
        except GateError as err:
            log.debug("gate %s: cannot ack event: %s", self.name, err)
        p = f.payload
        if f.type == EVT_BOOT:
            # event SEQ restarts with every boot, and BOOT is always its first event
            with self._lock:
                self._last_evseq = None
            if len(p) >= 3:
                log.info("gate %s: controller booted (boot %04X, reason %d)", self.name,
                         int.from_bytes(p[:2], "big"), p[2])
                self._note_boot(int.from_bytes(p[:2], "big"))
            return
        with self._lock:
            if self._last_evseq == f.seq:
                return  # a retransmission of an event already delivered
            self._last_evseq = f.seq
        if f.type in (EVT_PASSAGE, EVT_TIMEOUT) and len(p) >= 4:
            token = int.from_bytes(p[:2], "big")
            with self._lock:
                o = self._opens.pop(token, None)
            if o is None:
                o = _Open(token, Direction(p[2]) if p[2] in (1, 2) else Direction.IN, None)
            late = "late: after ABORTED; " if o.aborted else ""
            if f.type == EVT_PASSAGE:
                ms = int.from_bytes(p[3:5], "big") if len(p) >= 5 else None
                self._emit_open_end(GateEventKind.PASSED, o, elapsed_ms=ms, detail=late.rstrip("; "))
            else:
                self._emit_open_end(GateEventKind.TIMED_OUT, o,
                                    detail=late + TIMEOUT_WHY.get(p[3], "?"))
        elif f.type == EVT_ALARM and len(p) >= 3:
            self._emit(GateEventKind.ALARM, alarm=ALARMS.get(p[0], str(p[0])), active=bool(p[1]),
                       direction={1: "in", 2: "out"}.get(p[2], ""))
        elif f.type == EVT_EMERGENCY and len(p) >= 2:
            with self._lock:
                self._emergency = bool(p[0])
            src = "+".join(n for b, n in ((1, "fire"), (2, "host")) if p[1] & b)
            self._emit(GateEventKind.EMERGENCY, active=bool(p[0]), detail=src)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._request(CMD_STATUS)   # the reader applies the answer
            except GateError as err:
                log.debug("gate %s heartbeat: %s", self.name, err)

    def _emit_open_end(self, kind: GateEventKind, o: _Open, *, elapsed_ms: int | None = None,
                       detail: str = "") -> None:
        self._emit(kind, direction=o.direction.name.lower(), token=o.token,
                   record_seq=o.record_seq, elapsed_ms=elapsed_ms, detail=detail)

    def _emit(self, kind: GateEventKind, **fields: Any) -> None:
        self._events.put(GateEvent(kind, time.monotonic_ns(), self.name, **fields))

    def _dispatcher(self) -> None:
        while (event := self._events.get()) is not None:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("gate %s: listener raised on %s", self.name, event.kind)


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
    def from_profile(cls, section: Mapping[str, Any]) -> GateActuator:
        """Build from a profile's ``[gate]`` table: ``backend`` ("serial" or "sim"),
        ``direction``, ``open_ms``, and the backend's own keys (``url``, timings…)."""
        from drivers.registry import load_backend

        cfg = dict(section)
        backend = str(cfg.pop("backend", "serial"))
        direction, open_ms = cfg.pop("direction", "in"), int(cfg.pop("open_ms", 5000))
        try:
            gate = load_backend("gate", backend)(**cfg)
        except TypeError as err:
            raise ConfigError(f"[gate] {err}") from err
        return cls(gate, direction=direction, open_ms=open_ms, owns_gate=True)

    @property
    def available(self) -> bool:
        return self.gate.available

    def subscribe(self, listener: GateListener) -> Callable[[], None]:
        return self.gate.subscribe(listener)

    def guard(self, decision: Decision) -> Decision:
        """``decision`` unchanged, or — if it accepts and the gate cannot open — a denial
        with ``Reason.GATE_OUT_OF_SERVICE`` and :data:`OUT_OF_SERVICE_PROMPT` (no fare)."""
        if not decision.accepted or self.gate.available:
            return decision
        return replace(decision, accepted=False, reason=Reason.GATE_OUT_OF_SERVICE,
                       amount_cents=0, prompt=OUT_OF_SERVICE_PROMPT, counters=(),
                       rule_id="pre:gate")

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
                log.error("gate %s: open for record %s failed: %s", self.gate.name, seq, err)
                self.gate._emit(GateEventKind.OPEN_FAILED, direction=self.direction.name.lower(),
                                record_seq=seq, detail=str(err))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._work.put(None)
        self._worker.join(2.0)
        if self._owns_gate:
            self.gate.close()
