"""The hub's web side: one ASGI application (Starlette) behind one TLS listener (uvicorn).

It serves enrollment (``docs/security.md``) and, with ``ykt hub web --db``, the operations
console at ``/console`` and ``/metrics`` (:mod:`sync.hub.web_console`); the policy parts
and the hotlist feed join it as routes (``DESIGN.md``, "One web side for the hub").

Routes (JSON in, JSON out; every certificate and key PEM):

* ``GET /v1/ca`` → ``{"ca": PEM}``: the hub CA. A terminal fetches it over an unverified
  connection and accepts it only if its SHA-256 is the fingerprint in its token; every
  later request is verified against it.
* ``POST /v1/enroll`` ``{"token", "csr"}`` → ``{"terminal", "certificate", "ca",
  "hub_signing_pub", "channels"}``; 403 with a reason for a bad/used/expired token.
* ``POST /v1/renew`` ``{"certificate", "csr", "signature"}`` (base64 signature of the
  CSR's DER by the current key) → the same as enroll.

Request bodies over :data:`MAX_BODY` bytes are refused (413) before they are parsed.
Nothing here logs a request body: tokens and CSRs never reach a log.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from sync.hub.ca import HubCA, new_private_key, write_private_key, write_public
from sync.hub.enroll import EnrollmentRefused, Issued, redeem, renew

__all__ = ["MAX_BODY", "EnrollmentServer", "build_app", "server_certificate"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
"""Largest request body accepted, bytes (a CSR and a certificate are ~1 KB)."""

OnIssued = Callable[[Issued], None]


def _json(issued: Issued) -> dict[str, Any]:
    d = asdict(issued)
    for k in ("certificate", "ca", "hub_signing_pub"):
        d[k] = d[k].decode()
    return d


async def _body(request: Request) -> dict[str, Any]:
    size = request.headers.get("content-length")
    if size is None or not size.isdigit() or int(size) > MAX_BODY:
        raise EnrollmentRefused("a request body of at most 64 KiB with Content-Length")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise EnrollmentRefused("request body too large")
    try:
        data = json.loads(raw)
    except ValueError:
        raise EnrollmentRefused("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise EnrollmentRefused("the request body must be a JSON object")
    return data


def build_app(ca: HubCA, on_issued: OnIssued | None = None,
              routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The hub's ASGI application. ``on_issued`` runs after each enrollment or renewal
    (e.g. to add the terminal to the broker's dynamic security); ``routes`` are mounted
    beside enrollment (e.g. :func:`sync.hub.hotlist_http.hotlist_routes`)."""
    lock = threading.Lock()       # enrollment writes files: one at a time

    def done(issued: Issued, what: str) -> JSONResponse:
        log.info("%s terminal %s", what, issued.terminal)
        if on_issued is not None:
            on_issued(issued)
        return JSONResponse(_json(issued))

    async def get_ca(request: Request) -> JSONResponse:
        return JSONResponse({"ca": ca.paths.ca_cert.read_text()})

    async def post_enroll(request: Request) -> JSONResponse:
        try:
            data = await _body(request)
            token, csr = str(data.get("token", "")), str(data.get("csr", ""))
            with lock:
                issued = redeem(ca, token, csr.encode())
        except EnrollmentRefused as err:
            log.warning("enrollment refused: %s", err)
            return JSONResponse({"error": str(err)}, status_code=403)
        return done(issued, "enrolled")

    async def post_renew(request: Request) -> JSONResponse:
        try:
            data = await _body(request)
            try:
                sig = base64.b64decode(str(data.get("signature", "")), validate=True)
            except (binascii.Error, ValueError):
                raise EnrollmentRefused("the signature is not base64") from None
            with lock:
                issued = renew(ca, str(data.get("certificate", "")).encode(),
                               str(data.get("csr", "")).encode(), sig)
        except EnrollmentRefused as err:
            log.warning("renewal refused: %s", err)
            return JSONResponse({"error": str(err)}, status_code=403)
        return done(issued, "renewed")

    return Starlette(routes=[Route("/v1/ca", get_ca, methods=["GET"]),
                             Route("/v1/enroll", post_enroll, methods=["POST"]),
                             Route("/v1/renew", post_renew, methods=["POST"]), *routes])


def server_certificate(ca: HubCA, hosts: list[str]) -> tuple[Path, Path]:
    """``web.key`` (0600) and ``web.crt`` in the identity directory: the web side's TLS
    server certificate from the hub CA, for ``hosts``. Re-issued on every call."""
    key = new_private_key()
    key_path, cert_path = ca.paths.dir / "web.key", ca.paths.dir / "web.crt"
    write_private_key(key_path, key)
    write_public(cert_path, ca.issue_server(key.public_key(), hosts))
    return key_path, cert_path


class EnrollmentServer:
    """uvicorn serving :func:`build_app` over TLS on ``host:port``, in a thread.

    ``start()`` returns once it listens (``TimeoutError`` after ``timeout`` s)."""

    def __init__(self, ca: HubCA, host: str, port: int, *, hosts: list[str] | None = None,
                 on_issued: OnIssued | None = None, routes: Sequence[BaseRoute] = ()) -> None:
        import uvicorn

        key, cert = server_certificate(ca, hosts or [host])
        self.config = uvicorn.Config(build_app(ca, on_issued, routes), host=host, port=port,
                                     ssl_keyfile=str(key), ssl_certfile=str(cert),
                                     log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None
        self.url = f"https://{host}:{port}"

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self.server.run, name="ykt-hub-web",
                                        daemon=True)
        self._thread.start()
        started = threading.Event()

        def poll() -> bool:
            return bool(self.server.started) or not (self._thread and self._thread.is_alive())

        # uvicorn has no "started" event to wait on: poll its flag with a bounded wait
        for _ in range(int(timeout / 0.02)):
            if poll():
                break
            started.wait(0.02)
        if not self.server.started:
            raise TimeoutError(f"the enrollment server did not start on {self.url}")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
