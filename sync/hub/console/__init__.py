"""The hub's operations console: server-rendered pages mounted at ``/console`` of the hub's
one web application (:mod:`sync.hub.web`), next to enrollment and ``/metrics``.

Pages (one module each: :mod:`.pages` views, :mod:`.actions` changes): fleet with
filters, a terminal, reports with inline-SVG charts, policy rollout per channel and
publishing of offline-signed bundles, rejects and chain breaks, the hotlist form,
用卡轨迹 and the audit log. Log-in, roles, sessions and CSRF: :mod:`.auth`; accounts and
the audit log: :mod:`.accounts`. Every asset (one stylesheet) is served from
``sync/hub/console/static``; nothing is loaded from elsewhere, no script runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.pseudonym import Pseudonymizer
from sync.hub.console.accounts import Accounts, may
from sync.hub.console.auth import SESSION_MAX_AGE_S, check_routes, csrf_token, current_user
from sync.hub.fleetstore import FleetStore
from sync.hub.store import HubStore

__all__ = ["ConsoleConfig", "HotlistPublish", "PolicyPublish", "build_console",
           "console_routes"]

HERE = Path(__file__).parent

HotlistPublish = Callable[[str, str, str], str]
"""``(action "add"|"remove", identifier, reason) -> what was published`` (e.g. ``"city/bus
online #12"``): hashes the identifier and publishes (:func:`sync.hub.web_console.
hotlist_publisher` over :func:`sync.hub.hotlist.publish_change`); raises ``ValueError``,
``LookupError``, ``PermissionError``, ``OSError``, ``TimeoutError``."""

PolicyPublish = Callable[[bytes], str]
"""``(signed envelope bytes) -> what was published``; raises ``ValueError``/``OSError``."""

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
]


@dataclass
class ConsoleConfig:
    """What the console needs: the hub store, its fleet tables (``ykt hub fleet``'s last
    known state; None shows only what the store's statuses say). ``pseudonymizer`` None disables 用卡轨迹 and the hotlist
    form (they say why); ``hotlist`` / ``publish`` None disable those changes.
    ``session_key`` signs the session cookies (random per process by default: sessions
    end when the hub restarts; give every instance behind one name the same key)."""

    store: HubStore
    accounts: Accounts
    fleet: FleetStore | None = None
    pseudonymizer: Pseudonymizer | None = None
    hotlist: HotlistPublish | None = None
    publish: PolicyPublish | None = None
    session_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    secure_cookies: bool = True
    tz: str = "Asia/Shanghai"
    offline_after_s: float = 120.0
    render: Any = None


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every console response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with)


def build_console(cfg: ConsoleConfig) -> Starlette:
    """The console as an ASGI app, to be mounted at ``/console``."""
    from sync.hub.console import actions, pages

    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))

    def render(request: Request, name: str, context: dict[str, Any] | None = None,
               status: int = 200) -> Response:
        user = current_user(request)
        ctx = {"request": request, "user": user, "csrf": csrf_token(request),
               "may": (lambda p: user is not None and may(user.role, p)),
               "url": request.url_for, **(context or {})}
        return HTMLResponse(env.get_template(name).render(ctx), status_code=status)

    cfg.render = render
    routes = [*pages.routes(), *actions.routes(),
              Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
    check_routes(routes)
    app = Starlette(routes=routes, middleware=[
        Middleware(_SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=cfg.session_key, session_cookie="ykt_console",
                   max_age=SESSION_MAX_AGE_S, same_site="strict",
                   https_only=cfg.secure_cookies)])
    app.state.console = cfg
    return app


def console_routes(cfg: ConsoleConfig) -> list[Any]:
    """The routes the hub's web app adds: ``/console`` and a redirect from ``/``."""
    from starlette.responses import RedirectResponse

    async def home(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=303)

    return [Route("/", home, methods=["GET"]), Mount("/console", build_console(cfg))]
