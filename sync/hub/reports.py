"""Settlement and statistics reports of the hub: :func:`build_report` and
:func:`settlement_statement`, on the SQLite and the PostgreSQL store alike.

Both read the hourly rollup (:mod:`sync.hub.report_rollup`) with one grouping query and
fold its UTC hours into days, months and hours of the deployment's timezone (``zoneinfo``;
``Asia/Shanghai`` by default), so a month is cut at local midnight, not at UTC's.

Figures (all amounts are integer fen):

====================  ====================================================================
``records``           records of any kind (decisions and events)
``accepted``          accepted decisions: rides, entries, services
``denied``            refused decisions
``passed``            people who went through a gate (``passed`` events): the visitor count
``concessions``       accepted decisions with a concession category
``amount_fen``        fen taken by accepted decisions (amounts are net of entries that a
                      ``not_entered`` event gave back: rows of decision ``undone``)
``fare_std_fen``      the standard fares that concessions replaced
``claim_fen``         ``fare_std − amount`` over concessions: the operator's subsidy claim
``missing_fields``    accepted decisions journaled without the settlement fields (older
                      terminals): category ``(unknown)``, fare and claim counted as 0
====================  ====================================================================
"""

from __future__ import annotations

import calendar
import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.errors import ConfigurationError
from sync.hub.report_rollup import UNKNOWN
from sync.hub.store import HubStore

__all__ = ["GROUPS", "MEASURES", "Report", "ReportError", "SETTLEMENT_MEASURES",
           "build_report", "settlement_statement"]

TIME_GROUPS = ("month", "day", "hour")
ROLLUP_GROUPS = ("terminal", "route", "site", "operator", "product", "category", "reason",
                 "decision")
GROUPS = TIME_GROUPS + ROLLUP_GROUPS
"""What ``group_by`` may name: ``hour`` is the local hour of the day (``00``–``23``)."""

MEASURES = ("records", "accepted", "denied", "passed", "concessions", "amount_fen",
            "fare_std_fen", "claim_fen", "missing_fields")
SETTLEMENT_MEASURES = ("rides", "amount_fen", "fare_std_fen", "claim_fen", "missing_fields")

_SQL_MEASURES = (
    "sum(n)",
    "sum(CASE WHEN decision='accepted' THEN n ELSE 0 END)",
    "sum(CASE WHEN decision='denied' THEN n ELSE 0 END)",
    "sum(CASE WHEN kind='passed' THEN n ELSE 0 END)",
    f"sum(CASE WHEN decision='accepted' AND category<>'' AND category<>'{UNKNOWN}' "
    "THEN n ELSE 0 END)",
    "sum(amount)", "sum(fare_std)", "sum(claim)", "sum(missing)",
    # rides (settlement): accepted, less the entries a not_entered event gave back
    "sum(CASE WHEN decision='accepted' THEN n WHEN decision='undone' THEN -n ELSE 0 END)",
)


class ReportError(ConfigurationError):
    """A report cannot be made as asked: an unknown grouping, timezone, date or month.
    The message names the value and what is allowed."""


@dataclass
class Report:
    """A table: ``columns`` in order (the groups, then the figures), one dict per row
    keyed by column, and ``totals`` of every figure (amounts in fen). ``meta`` says what
    was asked: timezone, period (local dates and the UTC instants they cut at), filters."""

    columns: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ReportError(f"unknown timezone {tz!r} (an IANA name such as "
                          "'Asia/Shanghai')") from err


def _hour_at(day: dt.date, zone: ZoneInfo, tz: str) -> int:
    """The UTC hour number (epoch s // 3600) at which local ``day`` begins."""
    start = dt.datetime.combine(day, dt.time(0), zone).timestamp()
    if start % 3600:
        raise ReportError(f"timezone {tz!r}: local midnight of {day} is not on a whole UTC "
                          "hour; reports are rolled up by UTC hour (docs/hub.md)")
    return int(start // 3600)


def _connect_query(store: HubStore, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one read-only query on ``store``'s database, on a connection of its own (the
    store's own connection keeps ingesting meanwhile)."""
    path = getattr(store, "path", None)
    if path is not None:
        db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return list(db.execute(sql, tuple(params)))
        finally:
            db.close()
    conninfo = getattr(store, "_conninfo", None)  # PgHubStore (psycopg imported with it)
    if conninfo is None:
        raise TypeError(f"no report support for {type(store).__name__}")
    import psycopg

    with psycopg.connect(conninfo) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return list(conn.execute(sql.replace("?", "%s"), tuple(params)))


def _check_groups(group_by: Sequence[str]) -> list[str]:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ReportError(f"cannot group by {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(GROUPS)}")
    return list(dict.fromkeys(group_by))


def _fold(store: HubStore, groups: list[str], date_from: dt.date | None,
          date_to: dt.date | None, tz: str, where: dict[str, str | tuple[str, ...]]
          ) -> tuple[dict[tuple[Any, ...], list[int]], dict[str, Any]]:
    """Sums of :data:`MEASURES` per value tuple of ``groups`` over the rollup rows within
    the local dates (inclusive) matching ``where`` (rollup column → value)."""
    zone = _zone(tz)
    if date_from is not None and date_to is not None and date_to < date_from:
        raise ReportError(f"the period ends ({date_to}) before it begins ({date_from})")
    lo = _hour_at(date_from, zone, tz) if date_from is not None else None
    hi = _hour_at(date_to + dt.timedelta(days=1), zone, tz) if date_to is not None else None
    timed = any(g in TIME_GROUPS for g in groups)
    conds: list[str] = []
    params: list[Any] = []
    if lo is not None:
        conds.append("hour >= ?")
        params.append(lo)
    if hi is not None:
        conds.append("hour < ?")
        params.append(hi)
    for col, value in where.items():   # a tuple: any of its values
        wanted = value if isinstance(value, tuple) else (value,)
        conds.append(f"{col} IN ({', '.join('?' * len(wanted))})")
        params.extend(wanted)
    cond = f" WHERE {' AND '.join(conds)}" if conds else ""
    off = _fixed_offset(store, zone, cond, params) if timed else None
    if not timed:
        time_dims = []
    elif off is None:               # the offset changes within the period: fold each hour
        time_dims = ["hour"]
    else:            # local day number and/or hour of day, computed in SQL (no %: psycopg)
        time_dims = ([f"(hour + {off}) / 24"] if "day" in groups or "month" in groups
                     else ["-1"]) + ([f"(hour + {off}) - (hour + {off}) / 24 * 24"]
                                     if "hour" in groups else ["-1"])
    dims = time_dims + [g for g in groups if g in ROLLUP_GROUPS]
    sql = (f"SELECT {', '.join([*dims, *_SQL_MEASURES])} FROM report_hourly{cond}"
           + (f" GROUP BY {', '.join(grouped)}" if (grouped := [d for d in dims if d != "-1"])
              else ""))
    local_of: dict[tuple[int, ...], dict[str, str]] = {}
    acc: dict[tuple[Any, ...], list[int]] = {}
    for row in _connect_query(store, sql, params):
        values = [int(v or 0) for v in row[len(dims):]]
        if not values[0]:
            continue           # the one row of an aggregate over nothing
        named = dict(zip(dims[len(time_dims):], row[len(time_dims):len(dims)], strict=True))
        if timed:
            stamp = tuple(int(v) for v in row[:len(time_dims)])
            local = local_of.get(stamp)
            if local is None:
                local = local_of[stamp] = _local(stamp, zone, tz)
            named.update(local)
        key = tuple(named[g] for g in groups)
        sums = acc.get(key)
        if sums is None:
            acc[key] = values
        else:
            for i, v in enumerate(values):
                sums[i] += v
    meta: dict[str, Any] = {
        "tz": tz, "from": None if date_from is None else date_from.isoformat(),
        "to": None if date_to is None else date_to.isoformat(),
        "from_utc": None if lo is None else _utc(lo), "to_utc": None if hi is None else _utc(hi),
        "group_by": groups, **{f"filter_{k}": v for k, v in where.items()}}
    return acc, meta


def _fixed_offset(store: HubStore, zone: ZoneInfo, cond: str, params: list[Any]
                  ) -> int | None:
    """``zone``'s UTC offset in whole hours if it is the same at every hour of the stored
    period (then SQL can fold hours into local days), else None."""
    lo, hi = _connect_query(store, f"SELECT min(hour), max(hour) FROM report_hourly{cond}",
                            params)[0]
    if lo is None:
        return 0
    offsets = {dt.datetime.fromtimestamp(h * 3600, zone).utcoffset()
               for h in range(int(lo), int(hi) + 1)}
    if len(offsets) != 1:
        return None
    seconds = int(next(iter(offsets)).total_seconds())  # type: ignore[union-attr]
    return seconds // 3600 if seconds % 3600 == 0 else None


def _local(stamp: tuple[int, ...], zone: ZoneInfo, tz: str) -> dict[str, str]:
    """Local ``month``, ``day``, ``hour`` of a UTC hour number ``(hour,)`` or of a local
    ``(day number, hour of day)``. Raises :class:`ReportError` for an offset that is not
    whole hours."""
    if len(stamp) == 2:     # -1: not grouped by
        day = dt.date(1970, 1, 1) + dt.timedelta(days=max(stamp[0], 0))
        return {"month": day.strftime("%Y-%m"), "day": day.isoformat(),
                "hour": f"{stamp[1]:02d}"}
    local = dt.datetime.fromtimestamp(stamp[0] * 3600, zone)
    if local.minute or local.second:
        raise ReportError(f"timezone {tz!r} is not a whole number of hours from UTC; "
                          "reports are rolled up by UTC hour (docs/hub.md)")
    return {"month": local.strftime("%Y-%m"), "day": local.date().isoformat(),
            "hour": f"{local.hour:02d}"}


def _utc(hour: int) -> str:
    return dt.datetime.fromtimestamp(hour * 3600, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(groups: list[str], acc: dict[tuple[Any, ...], list[int]],
           measures: Sequence[str], pick: Sequence[int], meta: dict[str, Any]) -> Report:
    rows = []
    totals = dict.fromkeys(measures, 0)
    for key in sorted(acc, key=lambda k: tuple(str(v) for v in k)):
        values = [acc[key][i] for i in pick]
        row: dict[str, Any] = dict(zip(groups, key, strict=True))
        row.update(zip(measures, values, strict=True))
        rows.append(row)
        for m, v in zip(measures, values, strict=True):
            totals[m] += v
    return Report(columns=[*groups, *measures], rows=rows, totals=totals, meta=meta)


def build_report(store: HubStore, *, group_by: list[str],
                 date_from: dt.date | None = None, date_to: dt.date | None = None,
                 tz: str = "Asia/Shanghai") -> Report:
    """Figures (:data:`MEASURES`) of every stored record grouped by ``group_by`` (any of
    :data:`GROUPS`, in that order; none: one row of totals), for the local dates
    ``date_from``..``date_to`` inclusive (open ends when None) in timezone ``tz``.

    Raises :class:`ReportError` for an unknown group, timezone or an empty period, and
    the backend's error (``sqlite3.Error``, ``psycopg.Error``) if the database fails."""
    groups = _check_groups(group_by)
    acc, meta = _fold(store, groups, date_from, date_to, tz, {})
    return _table(groups, acc, MEASURES, range(len(MEASURES)), meta)


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """First and last day of ``YYYY-MM``. Raises :class:`ReportError` otherwise."""
    try:
        first = dt.datetime.strptime(month, "%Y-%m").date()
    except ValueError as err:
        raise ReportError(f"month {month!r} is not YYYY-MM (e.g. 2026-10)") from err
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def settlement_statement(store: HubStore, *, month: str, operator: str | None,
                         tz: str = "Asia/Shanghai") -> Report:
    """The monthly settlement statement of ``operator`` (all operators, one block each,
    when None): accepted rides or entries of the local month ``YYYY-MM`` in ``tz`` per
    concession category (``""`` for full fares, ``(unknown)`` for records without the
    fields) and route, with the fen taken, the standard fares replaced and the claim
    (:data:`SETTLEMENT_MEASURES`). ``docs/hub.md`` shows how to re-derive it from
    ``ykt hub export``. Raises :class:`ReportError` for a bad month or timezone."""
    first, last = month_bounds(month)
    groups = (["operator"] if operator is None else []) + ["category", "route"]
    where: dict[str, str | tuple[str, ...]] = {"decision": ("accepted", "undone")}
    if operator is not None:
        where["operator"] = operator
    acc, meta = _fold(store, groups, first, last, tz, where)
    meta.update(month=month, operator=operator, statement="settlement")
    # rides = accepted less given back; then amount, fare_std, claim, missing
    return _table(groups, acc, SETTLEMENT_MEASURES, (9, 5, 6, 7, 8), meta)
