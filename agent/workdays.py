"""Working days: the weekday rule, corrected by a holiday calendar (a policy part).

China's public-holiday schedule (published by the State Council each autumn for the next
year) has two kinds of exceptions to "Monday–Friday are working days":

* **holidays** (法定节假日 and the days moved next to them), e.g. 2026-10-01..07;
* **make-up working days** (调休上班), weekend days that are working days, e.g. Sunday
  2026-09-20 and Saturday 2026-10-10.

:class:`WorkCalendar` holds both for the years it ``covers``. A day it does not list (or
of a year it does not cover) follows the weekday rule. The calendar reaches terminals as
the policy bundle's ``calendar`` part (canonical JSON, :func:`parse_calendar_part`),
built by the hub from a TOML source (:func:`calendar_from_source`); see
``docs/rules.md`` (*Working days and holidays*).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

__all__ = ["CALENDAR_TYPE", "DayKind", "WorkCalendar", "calendar_from_source", "day_kind",
           "parse_calendar_part"]

CALENDAR_TYPE = "ykt-calendar"
MAX_DAYS = 2000
"""The most dates one calendar may list (a few years' worth): bounds a hostile part."""


@dataclass(frozen=True, slots=True)
class DayKind:
    """What a day is: ``working`` (a working day) and ``holiday`` (a public holiday;
    a plain weekend is neither)."""

    working: bool
    holiday: bool


_WEEKDAY = DayKind(True, False)
_WEEKEND = DayKind(False, False)
_HOLIDAY = DayKind(False, True)


def day_kind(day: date, calendar: WorkCalendar | None = None) -> DayKind:
    """The kind of ``day``: the calendar's if it lists the day, else the weekday rule
    (Monday–Friday working). Never raises."""
    if calendar is not None:
        if day in calendar.holidays:
            return _HOLIDAY
        if day in calendar.workdays:
            return _WEEKDAY
    return _WEEKDAY if day.weekday() < 5 else _WEEKEND


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """Holidays (date → name) and make-up working days for the ``years`` it covers."""

    name: str
    years: frozenset[int]
    holidays: Mapping[date, str] = field(default_factory=dict)
    workdays: frozenset[date] = frozenset()

    def covers(self, day: date) -> bool:
        """True when ``day``'s year is one this calendar was written for."""
        return day.year in self.years

    def part_bytes(self) -> bytes:
        """The canonical JSON of the ``calendar`` policy part (sorted keys, no spaces)."""
        doc = {"type": CALENDAR_TYPE, "v": 1, "name": self.name, "years": sorted(self.years),
               "holidays": {d.isoformat(): n for d, n in sorted(self.holidays.items())},
               "workdays": sorted(d.isoformat() for d in self.workdays)}
        return json.dumps(doc, ensure_ascii=False, sort_keys=True,
                          separators=(",", ":")).encode()


def _date(value: object, what: str) -> date:
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what}: {value!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a date (YYYY-MM-DD)") from None


def _build(name: object, years: object, holidays: Mapping[date, str],
           workdays: list[date]) -> WorkCalendar:
    """Check and make a calendar. Raises ``ValueError`` naming the first problem."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("calendar: 'name' must be a non-empty string")
    if (not isinstance(years, list) or not years
            or not all(isinstance(y, int) and not isinstance(y, bool) and 2000 <= y <= 2200
                       for y in years)):
        raise ValueError("calendar: 'years' must list the years it covers (e.g. [2026])")
    if len(holidays) + len(workdays) > MAX_DAYS:
        raise ValueError(f"calendar: more than {MAX_DAYS} dates")
    covered = frozenset(years)
    for d in [*holidays, *workdays]:
        if d.year not in covered:
            raise ValueError(f"calendar: {d} is outside the years it covers {sorted(covered)}")
    for d in workdays:
        if d in holidays:
            raise ValueError(f"calendar: {d} is both a holiday and a working day")
        if d.weekday() < 5:
            raise ValueError(f"calendar: make-up working day {d} is a {d:%A}; only a "
                             "Saturday or Sunday can be one (调休)")
    return WorkCalendar(name.strip(), covered, dict(holidays), frozenset(workdays))


def parse_calendar_part(data: bytes) -> WorkCalendar:
    """The calendar in a ``calendar`` policy part (JSON). Raises ``ValueError`` for
    anything else (not JSON, wrong type, bad or contradictory dates)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"calendar: not JSON: {type(err).__name__}") from None
    if not isinstance(doc, dict) or doc.get("type") != CALENDAR_TYPE or doc.get("v") != 1:
        raise ValueError(f"calendar: not a {CALENDAR_TYPE} v1 document")
    unknown = set(doc) - {"type", "v", "name", "years", "holidays", "workdays"}
    if unknown:
        raise ValueError(f"calendar: unknown keys {sorted(unknown)}")
    hol, work = doc.get("holidays", {}), doc.get("workdays", [])
    if not isinstance(hol, dict) or not all(isinstance(v, str) for v in hol.values()):
        raise ValueError("calendar: 'holidays' must map dates to names")
    if not isinstance(work, list):
        raise ValueError("calendar: 'workdays' must be a list of dates")
    holidays = {_date(k, "holidays"): v for k, v in hol.items()}
    return _build(doc.get("name"), doc.get("years"), holidays,
                  [_date(w, "workdays") for w in work])


def calendar_from_source(text: str, source: str = "<calendar>") -> WorkCalendar:
    """A calendar from its TOML source (what a city writes; the hub builds the part)::

        name = "CN-2026"
        years = [2026]
        [[holiday]]
        name = "国庆节"
        from = 2026-10-01
        to = 2026-10-07
        workdays = [2026-09-20, 2026-10-10]     # 调休: weekend days that are working days

    Raises ``ValueError`` (with ``source``) for a bad file.
    """
    try:
        doc: dict[str, Any] = tomllib.loads(text)
        unknown = set(doc) - {"name", "years", "holiday"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        holidays: dict[date, str] = {}
        workdays: list[date] = []
        for i, h in enumerate(doc.get("holiday", [])):
            if not isinstance(h, dict) or set(h) - {"name", "from", "to", "workdays"}:
                raise ValueError(f"holiday {i + 1}: needs name, from, to (and workdays)")
            first, last = _date(h.get("from"), "from"), _date(h.get("to", h.get("from")), "to")
            if last < first or (last - first).days > 31:
                raise ValueError(f"holiday {i + 1}: 'to' must be 0–31 days after 'from'")
            for n in range((last - first).days + 1):
                holidays[date.fromordinal(first.toordinal() + n)] = str(h.get("name", ""))
            workdays += [_date(w, "workdays") for w in h.get("workdays", [])]
        return _build(doc.get("name"), doc.get("years"), holidays, workdays)
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"{source}: {err}") from None
