"""What the console's pages show, computed from the hub store (no HTTP here).

* :func:`fleet_view` — the fleet rows of :func:`sync.hub.fleet.fleet_rows` with the
  console's three flags (offline, stale policy, alarms) and the filters on them;
* :func:`rollout` — terminals per applied policy version, per channel;
* :func:`activity` — the report series the charts draw (taps per hour in the deployment's
  timezone, concession rides per category and per route, refusals by reason), from
  :func:`sync.hub.reports.build_report` over ``[date_from, date_to]`` (local dates).

Every function takes the store and returns plain data, so the console, ``/metrics`` and
tests share one computation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sync.hub.console.storequery import terminal_states
from sync.hub.fleet import fleet_rows
from sync.hub.fleetstore import FleetSnapshot, FleetStore
from sync.hub.report_rollup import UNKNOWN
from sync.hub.reports import Report, build_report
from sync.hub.store import HubStore

__all__ = ["FLEET_FILTERS", "Activity", "activity", "fleet_view", "rollout"]

FLEET_FILTERS = ("offline", "stale", "alarms")


def fleet_view(store: HubStore, now: float, *, fleet: FleetStore | None = None,
               only: set[str] | None = None, offline_after_s: float = 120.0
               ) -> list[dict[str, Any]]:
    """The rows of :func:`sync.hub.fleet.fleet_rows` (what ``ykt hub fleet`` shows: the
    last known state kept offline, policy against the latest published, outbox age,
    clock by round trip) from ``store`` and the fleet tables ``fleet``, each with
    ``offline``/``stale``/``alarms`` flags and ``channel``/``version``; with ``only`` (a
    subset of :data:`FLEET_FILTERS`) just the rows showing every one of those flags."""
    snapshot = fleet.snapshot() if fleet is not None else FleetSnapshot()
    rows: list[dict[str, Any]] = []
    for r in fleet_rows(terminal_states(store), snapshot, now, offline_after_s):
        row: dict[str, Any] = dict(r)
        row["offline"] = not r["online"]
        row["channel"] = r["policy_channel"]
        row["version"] = "" if r["policy_version"] is None else str(r["policy_version"])
        rows.append(row)
    for f in only or ():
        rows = [r for r in rows if r[f]]
    return rows


def rollout(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{channel: {version: terminals}}`` over fleet rows (``"(none)"`` for terminals
    that report no policy), versions sorted newest first where numeric."""
    out: dict[str, Counter[str]] = {}
    for r in rows:
        ch = r["channel"] or "(none)"
        out.setdefault(ch, Counter())[r["version"] or "-"] += 1

    def order(v: str) -> tuple[int, str]:
        return (-int(v), "") if v.isdigit() else (0, v)

    return {ch: {v: c[v] for v in sorted(c, key=order)} for ch, c in sorted(out.items())}


@dataclass
class Activity:
    """The charts' series (label → count) and the report by day behind them."""

    taps_per_hour: dict[str, int] = field(default_factory=dict)
    concession_by_category: dict[str, int] = field(default_factory=dict)
    concession_by_route: dict[str, int] = field(default_factory=dict)
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    by_day: Report | None = None
    records: int = 0


def _series(rep: Report, label: Any, measure: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rep.rows:
        key = label(row)
        if key and row[measure]:
            out[key] = out.get(key, 0) + int(row[measure])
    return out


def activity(store: HubStore, date_from: date | None, date_to: date | None,
             tz: str = "Asia/Shanghai") -> Activity:
    """The charts' series over ``date_from`` .. ``date_to`` (inclusive local dates in
    ``tz``; None = open), from :func:`sync.hub.reports.build_report` (the hourly rollup):
    taps (decisions, accepted or denied) per local hour, concession rides/entries per
    category and per route (or site, for gates), refusals per reason, and the report by
    day. Raises :class:`sync.hub.reports.ReportError` for a bad timezone or period."""
    def rep(groups: list[str]) -> Report:
        return build_report(store, group_by=groups, date_from=date_from, date_to=date_to,
                            tz=tz)

    hours = rep(["hour"])
    taps = {r["hour"]: int(r["accepted"]) + int(r["denied"]) for r in hours.rows}
    by_day = rep(["day"])
    return Activity(
        taps_per_hour={k: v for k, v in taps.items() if v},
        concession_by_category=_series(
            rep(["category"]), lambda r: "" if r["category"] in ("", UNKNOWN)
            else r["category"], "concessions"),
        concession_by_route=_series(rep(["route", "site"]),
                                    lambda r: r["route"] or r["site"], "concessions"),
        refusals_by_reason=_series(rep(["reason"]), lambda r: r["reason"], "denied"),
        by_day=by_day,
        records=int(by_day.totals.get("accepted", 0)) + int(by_day.totals.get("denied", 0)))
