"""The console's read-only pages (every role may view them): fleet, terminal, reports,
policy rollout, problems (rejects and chain breaks)."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from sync.hub.console.accounts import Account
from sync.hub.console.auth import page
from sync.hub.console.charts import bar_chart
from sync.hub.console.storequery import problems as store_problems
from sync.hub.console.storequery import terminal_counts, terminal_states
from sync.hub.console.views import FLEET_FILTERS, activity, fleet_view, rollout
from sync.hub.reports import ReportError, settlement_statement

__all__ = ["routes"]


def _cfg(request: Request) -> Any:
    return request.app.state.console


def _render(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    return _cfg(request).render(request, name, ctx, status)  # type: ignore[no-any-return]


async def index(request: Request) -> Response:
    return RedirectResponse(request.url_for("fleet"), status_code=303)


@page()
def fleet(request: Request, user: Account) -> Response:
    cfg = _cfg(request)
    only = {f for f in FLEET_FILTERS if request.query_params.get(f)}
    rows = fleet_view(cfg.store, time.time(), fleet=cfg.fleet, only=only,
                      offline_after_s=cfg.offline_after_s)
    return _render(request, "fleet.html", {"rows": rows, "only": only,
                                           "filters": FLEET_FILTERS})


@page()
def terminal(request: Request, user: Account) -> Response:
    cfg = _cfg(request)
    tid = request.path_params["terminal"]
    row = next((r for r in fleet_view(cfg.store, time.time(), fleet=cfg.fleet,
                                      offline_after_s=cfg.offline_after_s)
                if r["terminal"] == tid), None)
    entry = terminal_states(cfg.store).get(tid)
    if entry is None and row is None:
        return _render(request, "error.html", {"message": f"no terminal {tid!r} here"}, 404)
    entry = entry or {}
    detail = terminal_counts(cfg.store, tid)
    return _render(request, "terminal.html", {
        "tid": tid, "entry": entry, "row": row, "counts": detail["counts"],
        "records": sum(c["count"] for c in detail["counts"]),
        "breaks": detail["breaks"], "rejects": detail["rejects"],
        "status": entry.get("status") or {}})


def _dates(request: Request, tz: str) -> tuple[date, date, str]:
    """``from``/``to`` query dates (ISO), default the last 7 days in ``tz``; an error text."""
    today = datetime.now(ZoneInfo(tz)).date()
    start, end, err = today - timedelta(days=6), today, ""
    try:
        if request.query_params.get("from"):
            start = date.fromisoformat(request.query_params["from"])
        if request.query_params.get("to"):
            end = date.fromisoformat(request.query_params["to"])
    except ValueError:
        err = "dates are YYYY-MM-DD"
    if start > end:
        err = "'from' is after 'to'"
    return start, end, err


@page()
def reports(request: Request, user: Account) -> Response:
    cfg = _cfg(request)
    start, end, err = _dates(request, cfg.tz)
    if err:
        return _render(request, "error.html", {"message": err}, 400)
    try:
        act = activity(cfg.store, start, end, cfg.tz)
    except ReportError as e:
        return _render(request, "error.html", {"message": str(e)}, 400)
    hours = [f"{h:02d}" for h in range(24)]

    def chart(title: str, series: dict[str, int], labels: list[str] | None = None) -> Any:
        labels = labels or sorted(series, key=lambda k: (-series[k], k))
        return bar_chart(title, labels, [series.get(k, 0) for k in labels])

    charts = [
        (f"Taps per hour ({cfg.tz})", chart("Taps per hour", act.taps_per_hour, hours)),
        ("Concession rides and entries per category",
         chart("Concession rides per category", act.concession_by_category)),
        ("Concession rides and entries per route / site",
         chart("Concession rides per route", act.concession_by_route)),
        ("Refusals by reason", chart("Refusals by reason", act.refusals_by_reason)),
    ]
    return _render(request, "reports.html", {"start": start, "end": end, "error": "",
                                             "charts": charts, "records": act.records,
                                             "by_day": act.by_day, "tz": cfg.tz})


@page()
def settlement(request: Request, user: Account) -> Response:
    cfg = _cfg(request)
    month = request.query_params.get("month") or datetime.now(ZoneInfo(cfg.tz)
                                                               ).strftime("%Y-%m")
    operator = request.query_params.get("operator") or None
    try:
        rep = settlement_statement(cfg.store, month=month, operator=operator, tz=cfg.tz)
    except ReportError as e:
        return _render(request, "error.html", {"message": str(e)}, 400)
    return _render(request, "settlement.html", {"rep": rep, "month": month,
                                                "operator": operator or "", "tz": cfg.tz})


@page()
def policy(request: Request, user: Account) -> Response:
    cfg = _cfg(request)
    rows = fleet_view(cfg.store, time.time(), fleet=cfg.fleet,
                      offline_after_s=cfg.offline_after_s)
    return _render(request, "policy.html", {"rollout": rollout(rows),
                                            "can_publish": cfg.publish is not None})


@page()
def problems(request: Request, user: Account) -> Response:
    rep = store_problems(_cfg(request).store)
    return _render(request, "problems.html", {"breaks": rep["breaks"],
                                              "rejects": rep["rejects"],
                                              "totals": rep["totals"]})


def routes() -> list[Route]:
    """The read-only routes."""
    return [Route("/", index, methods=["GET"], name="index"),
            Route("/fleet", fleet, methods=["GET"], name="fleet"),
            Route("/terminal/{terminal}", terminal, methods=["GET"], name="terminal"),
            Route("/reports", reports, methods=["GET"], name="reports"),
            Route("/reports/settlement", settlement, methods=["GET"], name="settlement"),
            Route("/policy", policy, methods=["GET"], name="policy"),
            Route("/problems", problems, methods=["GET"], name="problems")]
