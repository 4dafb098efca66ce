"""Serial QR scanner source: embedded scan modules that send the code text ended by CR/LF.

Most 2D scan engines (USB-CDC or UART) send each decoded code as one line. The port is
opened with ``serial.serial_for_url``, so ``/dev/ttyACM0``, ``/dev/ttyS1``, ``loop://``
or ``rfc2217://`` all work, and tests drive a real pseudo-terminal.

Framing: CR, LF or CRLF end a line; empty lines are skipped; a line longer than
``max_line`` bytes is discarded up to its end (logged, without its content); a fragment
left without an ending for ``stale_partial_s`` seconds is discarded (so the noise of a
replug cannot prefix the next code); a line that is not UTF-8 or holds control
characters is discarded as line noise. ``seen_ns`` is the monotonic time the line's
ending arrived. Identical lines within ``debounce_s`` (scanners in continuous mode repeat
a code) are one presentation. A failed port is reopened every ``reconnect_s`` seconds.

``port_open`` is set while the port is open (a pseudo-terminal's input written before
that is flushed by the open); ``stats`` counts bytes read, lines, discards, failed opens
and reopens, so a caller can wait for what the scanner has seen.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agent.model import Presentation, PresentationKind
from agent.pseudonym import Pseudonymizer, mask_code
from drivers.base import Debouncer, PresentationSource
from drivers.exceptions import ConfigError, SerialDeviceError
from drivers.options import DriverOptions, ScannerOptions, expect

__all__ = ["SerialScannerSource"]

log = logging.getLogger(__name__)


class SerialScannerSource(PresentationSource):
    """Code texts from a serial scan module, one per CR/LF-terminated line."""

    def __init__(
        self,
        url: str = "/dev/ttyACM0",
        *,
        baudrate: int = 9600,
        max_line: int = 4096,
        stale_partial_s: float = 1.0,
        debounce_s: float = 1.0,
        reconnect_s: float = 1.0,
        read_timeout_s: float = 0.05,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if max_line < 16:
            raise ConfigError(f"scanner max_line must be >= 16, got {max_line}")
        if baudrate <= 0:
            raise ConfigError(f"scanner baudrate must be positive, got {baudrate}")
        self.url = url
        self.name = name or f"scanner:{url}"
        self.baudrate = baudrate
        self.max_line = max_line
        self.stale_partial_ns = int(stale_partial_s * 1e9)
        self.reconnect_s = reconnect_s
        self.read_timeout_s = read_timeout_s
        self.debouncer = Debouncer(debounce_s)
        self._port: Any = None
        self.port_open = threading.Event()
        """Set while the port is open."""
        self.stats = {"bytes": 0, "lines": 0, "emitted": 0, "too_long": 0, "noise": 0,
                      "stale": 0, "open_failed": 0, "reopened": 0}

    @classmethod
    def from_options(cls, options: DriverOptions, *,
                     pseudonymizer: Pseudonymizer) -> SerialScannerSource:
        o = expect(options, ScannerOptions)
        return cls(o.url, baudrate=o.baudrate, max_line=o.max_line,
                   stale_partial_s=o.stale_partial_s, debounce_s=o.debounce_s,
                   reconnect_s=o.reconnect_s, read_timeout_s=o.read_timeout_s, name=o.name)

    def _open(self) -> Any:
        import serial

        try:
            return serial.serial_for_url(self.url, baudrate=self.baudrate,
                                         timeout=self.read_timeout_s)
        except (serial.SerialException, OSError, ValueError) as err:
            raise SerialDeviceError(f"cannot open scanner port: {err}", device=self.url) from err

    def _run(self) -> None:
        import serial

        while not self.stopping:
            try:
                self._port = self._open()
                self.port_open.set()
            except SerialDeviceError as err:
                self.stats["open_failed"] += 1
                log.warning("%s", err)
                self._stop.wait(self.reconnect_s)
                continue
            try:
                self._read_lines(self._port)
            except (serial.SerialException, OSError) as err:
                if self.stopping:
                    break
                log.warning("%s: port failed (%s); reopening in %.1f s", self.name,
                            type(err).__name__, self.reconnect_s)
                self.stats["reopened"] += 1
                self._stop.wait(self.reconnect_s)
            finally:
                self._close_port()

    def _read_lines(self, port: Any) -> None:
        buf = bytearray()
        overflow = False
        last_ns = 0
        while not self.stopping:
            chunk = port.read(max(1, getattr(port, "in_waiting", 0) or 0))
            now = time.monotonic_ns()
            if not chunk:
                if buf and now - last_ns > self.stale_partial_ns:
                    self.stats["stale"] += 1
                    log.warning("%s: discarded a %d-byte fragment without line ending",
                                self.name, len(buf))
                    buf.clear()
                    overflow = False
                continue
            last_ns = now
            self.stats["bytes"] += len(chunk)
            start = 0
            for i, b in enumerate(chunk):
                if b not in (0x0A, 0x0D):
                    continue
                piece = chunk[start:i]
                start = i + 1
                if overflow:
                    overflow = False
                    buf.clear()
                    continue
                buf += piece
                if len(buf) > self.max_line:
                    self._too_long(len(buf))
                else:
                    self._line(bytes(buf), now)
                buf.clear()
            rest = chunk[start:]
            if overflow:
                continue
            buf += rest
            if len(buf) > self.max_line:
                self._too_long(len(buf))
                buf.clear()
                overflow = True

    def _too_long(self, n: int) -> None:
        self.stats["too_long"] += 1
        log.warning("%s: discarded a line longer than %d bytes (%d+)", self.name,
                    self.max_line, n)

    def _line(self, raw: bytes, seen_ns: int) -> None:
        if not raw.strip():
            return
        self.stats["lines"] += 1
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        if not text or not text.isprintable():
            self.stats["noise"] += 1
            log.warning("%s: discarded %d bytes of line noise", self.name, len(raw))
            return
        if not self.debouncer.fresh(text, seen_ns):
            return
        self.stats["emitted"] += 1
        log.debug("%s: code %s", self.name, mask_code(text))
        self.emit(Presentation(kind=PresentationKind.CODE, source=self.name, seen_ns=seen_ns,
                               text=text))

    def _close_port(self) -> None:
        self.port_open.clear()
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:
                log.debug("closing %s failed", self.name, exc_info=True)

    def _close(self) -> None:
        port = self._port
        if port is not None and hasattr(port, "cancel_read"):
            try:
                port.cancel_read()
            except Exception:
                pass
