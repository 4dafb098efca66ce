"""A code verification service over HTTPS, as the electronic SSC platform runs one.

:class:`CodeService` issues online codes (``ESSC:`` + a random token, as a phone would
show them) for simulated holders and answers ``POST /verify`` with ``{"code": text}`` by
the verdict format of :mod:`agent.codes.online_http`. Its TLS certificate comes from a
test CA of its own (:func:`make_service_ca`); a terminal trusts that CA through
``[[codes.online]] ca_file``.

Its :attr:`CodeService.mode` plays the faults a terminal must survive: ``ok``, ``slow``
(answers after ``slow_s`` seconds, 5 by default), ``garbage`` (answers bytes that are no
verdict) and ``down`` (:meth:`stop`: the port refuses connections). ``requests`` counts
the calls that reached it.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from simulator.broker import free_port
from sync.hub.ca import HubCA, new_private_key, write_private_key, write_public

__all__ = ["CodeService", "ServiceCA", "make_service_ca"]

Mode = Literal["ok", "slow", "garbage"]


@dataclass(frozen=True)
class ServiceCA:
    """The test CA's certificate (for the terminal) and the service's certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


def make_service_ca(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
                    ) -> ServiceCA:
    """A test CA in ``directory`` and a server certificate for ``hosts`` signed by it."""
    ca = HubCA.init(directory / "ca", hub_id="essc-test")
    key = new_private_key()
    cert = ca.issue_server(key.public_key(), hosts)
    out = ServiceCA(ca.paths.ca_cert, directory / "service.crt", directory / "service.key")
    write_public(out.cert, cert)
    write_private_key(out.key, key)
    return out


class CodeService:
    """The HTTPS verification service on ``127.0.0.1``; :meth:`start`, :meth:`stop`."""

    def __init__(self, tls: ServiceCA, *, port: int = 0, slow_s: float = 5.0) -> None:
        self.tls = tls
        self.port = port or free_port()
        self.slow_s = slow_s
        self.mode: Mode = "ok"
        self.requests = 0
        self._codes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()     # ends a slow answer early at stop
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/verify"

    def issue(self, ssn: str, *, region: str = "370302", categories: tuple[str, ...] = (),
              birth_date: str = "", valid_until: str = "") -> str:
        """A fresh online code for holder ``ssn`` (the text a phone shows)."""
        token = secrets.token_urlsafe(24)
        claims: dict[str, Any] = {"result": "valid", "subject": ssn, "region": region,
                                  "categories": list(categories)}
        if birth_date:
            claims["birth_date"] = birth_date
        if valid_until:
            claims["valid_until"] = valid_until
        with self._lock:
            self._codes[token] = claims
        return f"ESSC:{token}"

    def start(self) -> CodeService:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                service._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="code-service",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections (a hung answer is released). Safe twice."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
        length = min(int(h.headers.get("Content-Length") or 0), 8192)
        raw = h.rfile.read(length)
        if self.mode == "slow":
            self._release.wait(self.slow_s)
        if self.mode == "garbage":
            body = b"\x00\xff<html>gateway error</html>"
        else:
            try:
                text = json.loads(raw).get("code", "")
            except (ValueError, AttributeError):
                text = ""
            token = text[5:] if isinstance(text, str) and text.startswith("ESSC:") else ""
            with self._lock:
                claims = self._codes.get(token)
            verdict = claims or {"result": "invalid", "reason": "unknown"}
            body = json.dumps(verdict, ensure_ascii=False).encode()
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:        # the terminal gave up on a slow answer: nothing to tell
            pass

    def __enter__(self) -> CodeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
