"""What the console's pages show, computed from the hub store (no HTTP here).

* :func:`fleet_view` — the fleet rows of :func:`sync.hub.fleet.fleet_rows` with the
  console's three flags (offline, stale policy, alarms) and the filters on them;
* :func:`rollout` — terminals per applied policy version, per channel;
* :func:`activity` — the report series the charts draw (taps per hour in the deployment's
  timezone, concession rides per category and per route, refusals by reason), from the
  records whose decision time falls in ``[date_from, date_to]`` (dates in that timezone).

Every function takes the store and returns plain data, so the console, ``/metrics`` and
tests share one computation.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent.journal import parse_utc
from sync.hub.fleet import fleet_rows
from sync.hub.store import HubStore, SqliteHubStore, decision_fields

__all__ = ["FLEET_FILTERS", "Activity", "activity", "fleet_view", "rollout"]

FLEET_FILTERS = ("offline", "stale", "alarms")
STALE_STATES = frozenset({"stale", "expired", "refused"})
FREE_PRODUCT_SUFFIX = ("_free", "_concession")
"""Products that are concession rides/entries (the rule files name them ``elderly_free``,
``disabled_free``, ``youfu_free``, …)."""


def _flags(row: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    alarms = status.get("alarms") or []
    if isinstance(alarms, dict):
        alarms = [k for k, v in alarms.items() if v]
    row = dict(row)
    row["offline"] = not row["online"]
    row["stale"] = (str(row.get("policy_state", "")) in STALE_STATES
                    or bool(row.get("policy_refusal")))
    row["alarms"] = [str(a) for a in alarms] if isinstance(alarms, list) else [str(alarms)]
    row["channel"], _, row["version"] = str(row.get("policy") or "").rpartition("@")
    return row


def fleet_view(store: HubStore, now: float, *, only: set[str] | None = None,
               offline_after_s: float = 120.0) -> list[dict[str, Any]]:
    """Fleet rows with ``offline``, ``stale`` and ``alarms`` flags; with ``only`` (a subset
    of :data:`FLEET_FILTERS`) just the rows showing every one of those flags."""
    terminals = store.report()["terminals"]
    rows = [_flags(r, (terminals[r["terminal"]] or {}).get("status") or {})
            for r in fleet_rows(terminals, now, offline_after_s)]
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
    """The charts' series; every Counter maps a label to a count of records."""

    taps_per_hour: Counter[str] = field(default_factory=Counter)
    concession_by_category: Counter[str] = field(default_factory=Counter)
    concession_by_route: Counter[str] = field(default_factory=Counter)
    refusals_by_reason: Counter[str] = field(default_factory=Counter)
    records: int = 0


def _bodies(store: HubStore) -> list[str]:
    sql = "SELECT body FROM records"
    if isinstance(store, SqliteHubStore):
        reader = sqlite3.connect(store.path)
        try:
            return [b for (b,) in reader.execute(sql)]
        finally:
            reader.close()

    def work(conn: Any) -> list[str]:
        return [b for (b,) in conn.execute(sql)]

    with store._lock:                             # type: ignore[attr-defined]
        return list(store._transact("activity", work))   # type: ignore[attr-defined]


def activity(store: HubStore, date_from: date | None, date_to: date | None,
             tz: str = "Asia/Shanghai") -> Activity:
    """The charts' series over the decisions whose ``time`` falls on ``date_from`` ..
    ``date_to`` (inclusive; dates in ``tz``; None = open). Events (no decision) count in
    no series. Scans the records (the reports of ``ykt hub report`` use indexes)."""
    zone = ZoneInfo(tz)
    act = Activity()
    for text in _bodies(store):
        body = json.loads(text)
        if not isinstance(body.get("decision"), dict):
            continue
        try:
            local = datetime.fromtimestamp(parse_utc(str(body.get("time", ""))), UTC
                                           ).astimezone(zone)
        except ValueError:
            continue
        if (date_from and local.date() < date_from) or (date_to and local.date() > date_to):
            continue
        product, reason = decision_fields(body)
        act.records += 1
        act.taps_per_hour[f"{local.hour:02d}"] += 1
        if reason != "accepted":
            act.refusals_by_reason[reason or "?"] += 1
        elif product.endswith(FREE_PRODUCT_SUFFIX):
            category = str(body["decision"].get("category") or product)
            act.concession_by_category[category] += 1
            loc = body.get("location") if isinstance(body.get("location"), dict) else {}
            route = str(loc.get("route") or loc.get("site") or "-")
            act.concession_by_route[route] += 1
    return act
