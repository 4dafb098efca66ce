"""Log-in, sessions, roles and CSRF for the console.

* **Sessions** are Starlette's signed cookie (``SessionMiddleware``, itsdangerous HMAC,
  timestamped, :data:`SESSION_MAX_AGE_S`): ``HttpOnly`` always, ``Secure`` and
  ``SameSite=Strict``. The cookie carries the user name and the CSRF token only; the role
  is read from the accounts file on every request, so a removed account or a changed role
  takes effect on the next click.
* **CSRF**: a per-session random token (synchroniser token pattern) in a hidden field of
  every form; every POST handler is wrapped by :func:`post`, which refuses (403) a form
  whose ``csrf`` does not match before the handler runs — the log-in form included.
  :func:`check_routes` asserts at start-up that no POST route escaped the wrapper.
* **Roles** (:data:`sync.hub.console.accounts.ROLES`): :func:`page` and :func:`post` name
  the power a handler needs; a request without it gets 403 from the server, whatever the
  page showed, and the refusal of a change is audit-logged.
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from sync.hub.console.accounts import Account, Accounts, may

__all__ = ["SESSION_MAX_AGE_S", "check_routes", "csrf_token", "page", "post"]

SESSION_MAX_AGE_S = 8 * 3600
"""A session lasts one working shift, seconds."""

MAX_FORM_PART = 2 * 1024 * 1024
"""Largest form field or uploaded file, bytes (a policy envelope is well under 1 MiB)."""

Handler = Callable[..., Awaitable[Response] | Response]


async def _call(handler: Handler, *args: Any) -> Response:
    """Run a handler: a plain function in Starlette's thread pool (the database, Argon2
    and MQTT publishing block; the event loop keeps serving), a coroutine directly."""
    if inspect.iscoroutinefunction(handler):
        return await handler(*args)  # type: ignore[no-any-return]
    return await run_in_threadpool(handler, *args)  # type: ignore[arg-type]


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    tok = request.session.get("csrf")
    if not isinstance(tok, str) or len(tok) < 32:
        tok = secrets.token_urlsafe(32)
        request.session["csrf"] = tok
    return tok


def current_user(request: Request) -> Account | None:
    """The logged-in, still existing account of this session, or None."""
    name = request.session.get("user")
    if not isinstance(name, str):
        return None
    accounts: Accounts = request.app.state.console.accounts
    return accounts.get(name)


def origin(request: Request) -> str:
    """The client address for the audit log."""
    return request.client.host if request.client else ""


def _refuse(request: Request, status: int, message: str) -> Response:
    render = request.app.state.console.render
    return render(request, "error.html", {"message": message}, status)  # type: ignore[no-any-return]


def page(power: str = "view") -> Callable[[Handler], Callable[[Request],
                                                               Awaitable[Response]]]:
    """A GET handler for logged-in users holding ``power``; called as
    ``handler(request, user)``."""
    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            user = current_user(request)
            if user is None:
                return RedirectResponse(request.url_for("login"), status_code=303)
            if not may(user.role, power):
                return _refuse(request, 403, f"your role ({user.role}) may not do this")
            return await _call(handler, request, user)
        run.__name__ = handler.__name__
        return run
    return wrap


def post(power: str | None, action: str) -> Callable[[Handler], Callable[[Request],
                                                                        Awaitable[Response]]]:
    """A POST handler: CSRF first, then log-in (unless ``power`` is None: the log-in form
    itself) and ``power``; called as ``handler(request, user, form)``. A refusal for the
    role is audit-logged as ``action`` with outcome ``refused: role …``."""
    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            form = await request.form(max_files=1, max_fields=20,
                                      max_part_size=MAX_FORM_PART)
            try:
                sent = form.get("csrf")
                good = request.session.get("csrf")
                if not (isinstance(sent, str) and isinstance(good, str)
                        and hmac.compare_digest(sent.encode(), good.encode())):
                    return _refuse(request, 403, "the form's CSRF token is missing or "
                                   "stale: reload the page and submit again")
                if power is None:
                    return await _call(handler, request, None, form)
                user = current_user(request)
                if user is None:
                    return _refuse(request, 401, "log in first")
                if not may(user.role, power):
                    accounts: Accounts = request.app.state.console.accounts
                    accounts.audit(user.name, action, outcome=f"refused: role {user.role}",
                                   origin=origin(request))
                    return _refuse(request, 403, f"your role ({user.role}) may not do this")
                return await _call(handler, request, user, form)
            finally:
                await form.close()
        run.__name__ = handler.__name__
        run._ykt_csrf = True          # type: ignore[attr-defined]
        return run
    return wrap


def check_routes(routes: list[BaseRoute]) -> None:
    """Raise ``AssertionError`` if a POST route is not wrapped by :func:`post`."""
    for r in routes:
        if (isinstance(r, Route) and "POST" in (r.methods or ())
                and not getattr(r.endpoint, "_ykt_csrf", False)):
            raise AssertionError(f"POST {r.path} is not CSRF-checked")


def field(form: FormData, name: str, limit: int = 500) -> str:
    """A text field of ``form`` (``""`` when absent or a file), at most ``limit`` chars."""
    value: Any = form.get(name)
    return value[:limit] if isinstance(value, str) else ""
