"""The serial gate driver: the agent's side of the framed protocol, on three threads.

:class:`SerialGate` opens the line with ``serial.serial_for_url`` (a device, a pty, or
``loop://``) and runs three threads:

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
* a dispatcher that calls subscribers with :class:`~drivers.gate.protocol.GateEvent`; a
  subscriber that raises is logged and never stops the others.

The frames themselves are in :mod:`drivers.gate.protocol`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from drivers.exceptions import ConfigError, GateError
from drivers.gate import protocol as wire
from drivers.gate.protocol import (
    Direction,
    Frame,
    FrameDecoder,
    GateEvent,
    GateEventKind,
    GateListener,
    GateStatus,
    encode_frame,
)
from drivers.options import GateOptions, SerialGateOptions, expect

__all__ = ["SerialGate"]

log = logging.getLogger(__name__)



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
        #: retransmitted events received again and dropped (delivered once already)
        self.repeated_events = 0
        try:
            self._open_port()
        except GateError:
            if require_port:
                raise
        self._threads = [threading.Thread(target=fn, name=f"{name}-{fn.__name__}", daemon=True)
                         for fn in (self._reader, self._heartbeat, self._dispatcher)]
        for t in self._threads:
            t.start()

    @classmethod
    def from_options(cls, options: GateOptions) -> SerialGate:
        """Backend ``serial``: the line and timings of validated :class:`SerialGateOptions`."""
        o = expect(options, SerialGateOptions)
        return cls(o.url, **o.timings(), require_port=o.require_port)

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
        return GateStatus.parse(self._request(wire.CMD_STATUS).payload)

    def open(self, direction: str | int | Direction, duration_ms: int, *,
             record_seq: int | None = None) -> int:
        """Open for one passage in ``direction`` for at most ``duration_ms`` ms (100–60000).

        Returns the open's token once the controller acknowledged it; the open ends with a
        ``PASSED``, ``TIMED_OUT`` or ``ABORTED`` event carrying ``record_seq``. Raises
        :class:`GateError` if the controller refuses (busy, emergency) or does not answer,
        :class:`ConfigError` for a bad direction or duration.
        """
        d = Direction.parse(direction)
        if not wire.OPEN_MIN_MS <= duration_ms <= wire.OPEN_MAX_MS:
            raise ConfigError(f"open duration must be {wire.OPEN_MIN_MS}..{wire.OPEN_MAX_MS} ms, "
                              f"got {duration_ms}")
        with self._lock:
            self._token = (self._token + 1) & 0xFFFF
            token = self._token
            self._opens[token] = _Open(token, d, record_seq)
        payload = bytes((d,)) + duration_ms.to_bytes(2, "big") + token.to_bytes(2, "big")
        try:
            self._check(self._request(wire.CMD_OPEN, payload), "to open")
        except GateError:
            with self._lock:
                self._opens.pop(token, None)
            raise
        return token   # the reader reported OPENED when the acknowledgement came in

    def close_barrier(self) -> None:
        """Close now (an open in progress ends with ``TIMED_OUT``). Raises GateError."""
        self._check(self._request(wire.CMD_CLOSE), "to close")

    def emergency(self, on: bool) -> None:
        """Open all ways (fire alarm from the terminal's own input) or release. Raises GateError."""
        self._check(self._request(wire.CMD_EMERGENCY, b"\x01" if on else b"\x00"), "the emergency")

    def reboot(self) -> None:
        """Ask the controller to reboot (it answers first). Raises GateError."""
        self._check(self._request(wire.CMD_REBOOT), "to reboot")

    def report_open_failed(self, direction: Direction, record_seq: int | None,
                           detail: str) -> None:
        """Report ``OPEN_FAILED`` (the visitor did not enter) for an open that a caller of
        :meth:`open` could not make; subscribers get it in order with the other events."""
        self._emit(GateEventKind.OPEN_FAILED, direction=direction.name.lower(),
                   record_seq=record_seq, detail=detail)

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
            raise GateError(f"gate refused {what}: {wire.RESULTS.get(code, code)}", device=self.url,
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
        if f.type >= wire.EVT_BOOT:
            self._on_event(f)
            return
        if not f.type & wire.RSP:
            return
        if f.type == wire.CMD_STATUS | wire.RSP:
            try:
                self._note_status(GateStatus.parse(f.payload))
            except GateError as err:   # still answered below: status() raises it
                log.warning("gate %s: %s", self.name, err)
        elif f.type == wire.CMD_OPEN | wire.RSP and len(f.payload) >= 3 and f.payload[0] == 0:
            self._note_opened(int.from_bytes(f.payload[1:3], "big"))
        with self._lock:
            slot = self._pending.get(f.seq)
        if slot is not None and not slot[0].is_set():
            slot[1].append(f)
            slot[0].set()

    def _on_event(self, f: Frame) -> None:
        try:
            self._write(encode_frame(0, wire.CMD_EVENT_ACK, bytes((f.seq,))))
        except GateError as err:
            log.debug("gate %s: cannot ack event: %s", self.name, err)
        p = f.payload
        if f.type == wire.EVT_BOOT:
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
                self.repeated_events += 1
                return  # a retransmission of an event already delivered
            self._last_evseq = f.seq
        if f.type in (wire.EVT_PASSAGE, wire.EVT_TIMEOUT) and len(p) >= 4:
            token = int.from_bytes(p[:2], "big")
            with self._lock:
                o = self._opens.pop(token, None)
            if o is None:
                o = _Open(token, Direction(p[2]) if p[2] in (1, 2) else Direction.IN, None)
            late = "late: after ABORTED; " if o.aborted else ""
            if f.type == wire.EVT_PASSAGE:
                ms = int.from_bytes(p[3:5], "big") if len(p) >= 5 else None
                self._emit_open_end(GateEventKind.PASSED, o, elapsed_ms=ms, detail=late.rstrip("; "))
            else:
                self._emit_open_end(GateEventKind.TIMED_OUT, o,
                                    detail=late + wire.TIMEOUT_WHY.get(p[3], "?"))
        elif f.type == wire.EVT_ALARM and len(p) >= 3:
            self._emit(GateEventKind.ALARM, alarm=wire.ALARMS.get(p[0], str(p[0])), active=bool(p[1]),
                       direction={1: "in", 2: "out"}.get(p[2], ""))
        elif f.type == wire.EVT_EMERGENCY and len(p) >= 2:
            with self._lock:
                self._emergency = bool(p[0])
            src = "+".join(n for b, n in ((1, "fire"), (2, "host")) if p[1] & b)
            self._emit(GateEventKind.EMERGENCY, active=bool(p[0]), detail=src)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._request(wire.CMD_STATUS)   # the reader applies the answer
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
