"""A small static HTTP server for content-addressed policy parts, with Range support.

``GET /parts/<sha256>`` serves the file ``<root>/<sha256>``; ``Range: bytes=a-`` or
``bytes=a-b`` gives ``206 Partial Content`` so a terminal resumes a dropped download
where it stopped. Parts are immutable (named by their hash), so they are served with a
long ``Cache-Control`` and any web server or object store can replace this one at scale.

For tests, :meth:`PartServer.drop_next` makes the next response stop after a number of
bytes (the connection is cut), like a flaky mobile link.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["REQUESTS_KEPT", "PartServer"]

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/parts/([0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 256 * 1024
REQUESTS_KEPT = 100
"""How many recent GETs :attr:`PartServer.requests` remembers (tests, diagnostics)."""


class PartServer:
    """Serves ``root`` on ``http://host:port/parts/``. ``port=0`` picks a free port.

    :meth:`start` returns at once (a thread serves); :meth:`stop` is safe twice.
    ``bytes_sent`` counts body bytes sent (all responses); ``requests`` holds the last
    :data:`REQUESTS_KEPT` GETs as ``(path, Range header or "")`` (bounded: a production
    server runs for months).
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.bytes_sent = 0
        self.requests: deque[tuple[str, str]] = deque(maxlen=REQUESTS_KEPT)
        self._drop_after: int | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("parts http: " + format, *args)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                m = _PATH.match(self.path)
                path = server.root / m.group(1) if m else None
                if path is None or not path.is_file():
                    self.send_error(404, "no such part")
                    return
                size = path.stat().st_size
                start, end, status = 0, size - 1, 200
                rng = self.headers.get("Range", "")
                if body:
                    with server._lock:
                        server.requests.append((self.path, rng))
                if rng:
                    r = _RANGE.match(rng.strip())
                    if r is None or int(r.group(1)) >= max(size, 1):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start = int(r.group(1))
                    end = min(int(r.group(2)), size - 1) if r.group(2) else size - 1
                    status = 206
                length = max(0, end - start + 1)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Cache-Control", "public, max-age=31536000, immutable")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if not body:
                    return
                with server._lock:
                    drop, server._drop_after = server._drop_after, None
                sent = 0
                with open(path, "rb") as f:
                    f.seek(start)
                    while sent < length:
                        chunk = f.read(min(_CHUNK, length - sent))
                        if not chunk:
                            break
                        if drop is not None and sent + len(chunk) > drop:
                            chunk = chunk[:drop - sent]
                            self.wfile.write(chunk)
                            self.wfile.flush()
                            with server._lock:
                                server.bytes_sent += len(chunk)
                            log.info("parts http: dropping the connection after %d bytes",
                                     sent + len(chunk))
                            self.connection.shutdown(socket.SHUT_RDWR)
                            self.close_connection = True
                            return
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        sent += len(chunk)
                        with server._lock:
                            server.bytes_sent += len(chunk)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL of parts (``…/parts/``); a part is ``url + sha256``."""
        host = self._httpd.server_address[0]
        return f"http://{host!s}:{self.port}/parts/"

    def drop_next(self, after_bytes: int) -> None:
        """Cut the next GET response after ``after_bytes`` body bytes (fault injection)."""
        with self._lock:
            self._drop_after = after_bytes

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            name="parts-http", daemon=True)
            self._thread.start()
            log.info("serving policy parts from %s on %s", self.root, self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()
