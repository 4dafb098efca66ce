"""The console's forms that change something or look someone up: log-in/out, hotlist
entry (hotlist operator), publishing an offline-signed bundle (policy publisher),
用卡轨迹 and the audit log (auditor). Each change is audit-logged before it runs and its
outcome recorded after."""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from sync.hub.console.accounts import Account, Accounts, entry_dict
from sync.hub.console.auth import MAX_FORM_PART, csrf_token, field, origin, page, post
from sync.hub.console.trail import TrailRefused, lookup_trail, parse_identifier

__all__ = ["routes"]

log = logging.getLogger(__name__)

LOGIN_FAILURES_PER_MINUTE = 5
"""Failed log-ins for one account name in any 60 s after which log-in is refused."""


def _cfg(request: Request) -> Any:
    return request.app.state.console


def _render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    return _cfg(request).render(request, name, ctx, status)  # type: ignore[no-any-return]


async def login_form(request: Request) -> Response:
    csrf_token(request)
    return _render(request, "login.html", {"error": ""})


@post(None, "login")
def login(request: Request, _user: None, form: FormData) -> Response:
    accounts: Accounts = _cfg(request).accounts
    name, password = field(form, "name", 40).strip().lower(), field(form, "password", 200)
    if accounts.lookups_within(name, "login_failed", 60.0) >= LOGIN_FAILURES_PER_MINUTE:
        accounts.audit(name, "login_failed", outcome="refused: too many failures",
                       origin=origin(request))
        return _render(request, "login.html", {"error": "too many failed log-ins: wait a "
                                               "minute"}, 429)
    account = accounts.verify(name, password)
    if account is None:
        accounts.audit(name or "?", "login_failed", outcome="refused: bad name or password",
                       origin=origin(request))
        return _render(request, "login.html", {"error": "wrong name or password"}, 401)
    request.session.clear()                    # a new session: no fixation
    request.session["user"] = account.name
    csrf_token(request)
    accounts.audit(account.name, "login", origin=origin(request))
    return RedirectResponse(request.url_for("fleet"), status_code=303)


@post(None, "logout")
def logout(request: Request, _user: None, form: FormData) -> Response:
    request.session.clear()
    return RedirectResponse(request.url_for("login"), status_code=303)


def _hotlist_ctx(request: Request, **more: Any) -> dict[str, Any]:
    cfg = _cfg(request)
    why = ("" if cfg.pseudonymizer is not None and cfg.hotlist is not None else
           "the hotlist form needs the pseudonymisation key and the online hotlist key "
           "at this hub (docs/hub.md, console)")
    return {"disabled": why, "done": "", "error": "", **more}


@page()
def hotlist_form(request: Request, user: Account) -> Response:
    return _render(request, "hotlist.html", _hotlist_ctx(request))


@post("hotlist", "hotlist")
def hotlist(request: Request, user: Account, form: FormData) -> Response:
    cfg = _cfg(request)
    ctx = _hotlist_ctx(request)
    if ctx["disabled"]:
        return _render(request, "hotlist.html", ctx, 503)
    action = "remove" if field(form, "action") == "remove" else "add"
    reason = field(form, "reason", 200).strip()
    raw = field(form, "identifier", 64)
    try:
        ident = parse_identifier(raw, cfg.pseudonymizer)
    except TrailRefused as err:
        cfg.accounts.audit(user.name, f"hotlist_{action}", reason=reason,
                           outcome="refused: malformed identifier", origin=origin(request))
        return _render(request, "hotlist.html", {**ctx, "error": str(err)}, 400)
    if not reason:
        return _render(request, "hotlist.html", {**ctx, "error": "a reason is required "
                                                 "(e.g. 挂失 at the bank, ticket number)"}, 400)
    entry = cfg.accounts.audit(user.name, f"hotlist_{action}",
                               target=f"{ident.kind} {ident.masked}", reason=reason,
                               outcome="publishing", origin=origin(request))
    try:
        what = cfg.hotlist(action, "".join(raw.split()), reason)
    except (ValueError, OSError, LookupError, TimeoutError, PermissionError) as err:
        cfg.accounts.set_outcome(entry, f"failed: {err}")
        log.warning("hotlist %s by %s failed: %s", action, user.name, err)
        # a ValueError is the request (e.g. a reason over 64 characters); others the hub's
        status = 400 if isinstance(err, ValueError) and not isinstance(err, OSError) else 502
        return _render(request, "hotlist.html", {**ctx, "error": f"not published: {err}"},
                       status)
    cfg.accounts.set_outcome(entry, f"ok: {what}")
    return _render(request, "hotlist.html",
                   {**ctx, "done": f"{action} {ident.kind} {ident.masked}: {what}"})


@post("publish", "policy_publish")
def publish(request: Request, user: Account, form: FormData) -> Response:
    cfg = _cfg(request)
    upload = form.get("envelope")
    reason = field(form, "reason", 200).strip()
    if cfg.publish is None:
        return _render(request, "error.html", {"message": "publishing is not configured "
                                               "at this hub (--policy-repo)"}, 503)
    if not isinstance(upload, UploadFile) or not reason:
        return _render(request, "error.html", {"message": "choose the signed envelope "
                                               "(channels/…/versions/N.json) and give a "
                                               "reason"}, 400)
    data = upload.file.read(MAX_FORM_PART + 1)
    entry = cfg.accounts.audit(user.name, "policy_publish", target=str(upload.filename)[:80],
                               reason=reason, outcome="publishing", origin=origin(request))
    try:
        what = cfg.publish(data)
    except (ValueError, OSError, LookupError, TimeoutError, PermissionError) as err:
        cfg.accounts.set_outcome(entry, f"refused: {err}")
        return _render(request, "error.html", {"message": f"not published: {err}"}, 400)
    cfg.accounts.set_outcome(entry, f"ok: {what}")
    return RedirectResponse(str(request.url_for("policy")) + "?published=" + what[:60],
                            status_code=303)


@page("trail")
def trail_form(request: Request, user: Account) -> Response:
    return _render(request, "trail.html", {"rows": None, "error": "", "ident": None})


@post("trail", "trail")
def trail(request: Request, user: Account, form: FormData) -> Response:
    cfg = _cfg(request)
    try:
        if cfg.pseudonymizer is None:
            raise TrailRefused("用卡轨迹 needs the pseudonymisation key at this hub "
                               "($CREDENTIALS_DIRECTORY/pseudonym-key)")
        ident, rows = lookup_trail(cfg.store, cfg.accounts, cfg.pseudonymizer,
                                   user=user.name, identifier=field(form, "identifier", 64),
                                   reason=field(form, "reason", 300), origin=origin(request))
    except TrailRefused as err:
        status = 429 if "a minute" in str(err) else 400
        return _render(request, "trail.html", {"rows": None, "error": str(err),
                                               "ident": None}, status)
    return _render(request, "trail.html", {"rows": rows, "error": "", "ident": ident})


@page("audit")
def audit(request: Request, user: Account) -> Response:
    who = request.query_params.get("user") or None
    entries = [entry_dict(e) for e in _cfg(request).accounts.audit_log(limit=500, user=who)]
    return _render(request, "audit.html", {"entries": entries, "who": who or ""})


def routes() -> list[Route]:
    """The routes that change something (each POST CSRF-checked) or look someone up."""
    return [Route("/login", login_form, methods=["GET"], name="login"),
            Route("/login", login, methods=["POST"], name="login_post"),
            Route("/logout", logout, methods=["POST"], name="logout"),
            Route("/hotlist", hotlist_form, methods=["GET"], name="hotlist"),
            Route("/hotlist", hotlist, methods=["POST"], name="hotlist_post"),
            Route("/policy/publish", publish, methods=["POST"], name="publish"),
            Route("/trail", trail_form, methods=["GET"], name="trail"),
            Route("/trail", trail, methods=["POST"], name="trail_post"),
            Route("/audit", audit, methods=["GET"], name="audit")]
