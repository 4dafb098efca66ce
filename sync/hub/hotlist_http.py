"""The loss-reporting endpoint: a bank's or the SSC centre's system reports a card lost.

``POST /v1/hotlist`` with ``Authorization: Bearer <token>`` and a JSON body
``{"action": "add"|"remove", "card": "<卡识别码 or 社会保障号码>", "reason": "lost"}``
calls :func:`sync.hub.hotlist.publish_change` (the same function as ``ykt hub hotlist``
and the console's form) and answers ``200 {"key_prefix", "published": {channel:
sequence}}``. Refusals: ``401`` (no or a wrong token), ``400`` (a malformed body or CARD,
with the reason), ``413`` (a body over 4 KiB), ``502`` (the broker refused or is
unreachable: the change is recorded and goes out with the next one or the next build).

The tokens (one per calling system, any of them accepted) come from a credential, never
from a file in the repository: ``$CREDENTIALS_DIRECTORY/hotlist-api-tokens`` or
``$YKT_HOTLIST_API_TOKENS`` (whitespace-separated, each at least 32 characters); they are
compared in constant time. The route is mounted on the hub's web application
(:func:`sync.hub.web.build_app` ``routes=``), behind its TLS listener. The card number is
hashed before anything is logged; a request body is never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from agent.policy.signing import SigningKey
from agent.pseudonym import Pseudonymizer
from sync.hub.hotlist import HotlistChange, Publisher, publish_change

__all__ = ["MAX_BODY", "HotlistEndpoint", "hotlist_routes", "read_tokens"]

log = logging.getLogger(__name__)

MAX_BODY = 4096
"""Largest request body accepted, bytes."""
MIN_TOKEN = 32
"""Shortest API token accepted, characters."""


def read_tokens() -> tuple[str, ...]:
    """The API tokens from ``$CREDENTIALS_DIRECTORY/hotlist-api-tokens`` or
    ``$YKT_HOTLIST_API_TOKENS``. Raises ``ValueError`` for one shorter than
    :data:`MIN_TOKEN` or when there is none."""
    from agent.keys import read_secret

    tokens = tuple((read_secret("hotlist-api-tokens", "YKT_HOTLIST_API_TOKENS") or "").split())
    if not tokens:
        raise ValueError("no hotlist API token: set YKT_HOTLIST_API_TOKENS or "
                         "$CREDENTIALS_DIRECTORY/hotlist-api-tokens")
    if any(len(t) < MIN_TOKEN for t in tokens):
        raise ValueError(f"every hotlist API token needs at least {MIN_TOKEN} characters")
    return tokens


@dataclass(frozen=True)
class HotlistEndpoint:
    """What the endpoint needs: the policy repository, the online hotlist key, the
    deployment's pseudonymiser, a publisher and the accepted tokens."""

    repo: Path
    signer: SigningKey
    pseudonymizer: Pseudonymizer
    publish: Publisher
    tokens: tuple[str, ...]

    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        ok = False
        for t in self.tokens:          # no early exit: the time does not say which one
            ok |= hmac.compare_digest(given.strip().encode(), t.encode())
        return ok


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def hotlist_routes(endpoint: HotlistEndpoint) -> Sequence[BaseRoute]:
    """The Starlette routes to mount (``POST /v1/hotlist``)."""

    async def post_hotlist(request: Request) -> JSONResponse:
        if not endpoint.authorised(request):
            log.warning("hotlist request refused: no valid token (from %s)",
                        request.client.host if request.client else "?")
            return _error(401, "a valid 'Authorization: Bearer <token>' is required")
        size = request.headers.get("content-length")
        if size is None or not size.isdigit() or int(size) > MAX_BODY:
            return _error(413, f"a JSON body of at most {MAX_BODY} bytes with Content-Length")
        raw = await request.body()
        try:
            data = json.loads(raw[:MAX_BODY])
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            change = HotlistChange(str(data.get("action", "add")),  # type: ignore[arg-type]
                                   str(data.get("card", "")), str(data.get("reason", "lost")))
        except ValueError as err:
            return _error(400, str(err))
        try:
            res = await run_in_threadpool(
                publish_change, endpoint.repo, change, signer=endpoint.signer,
                pseudonymizer=endpoint.pseudonymizer, publish=endpoint.publish)
        except (PermissionError, OSError, TimeoutError, LookupError) as err:
            log.error("hotlist %s not published: %s", change.action, err)
            return _error(502, f"not published: {err}")
        return JSONResponse({"action": change.action, "kind": change.kind,
                             "key_prefix": res.key_prefix, "published": res.published})

    return [Route("/v1/hotlist", post_hotlist, methods=["POST"])]
