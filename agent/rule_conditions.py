"""Compiling a rule's ``when`` table into predicates over :class:`~agent.rules.Facts`.

Setting references (``max = "elderly_daily_free_rides"``, ``hours_outside =
"opening_hours"``) are resolved once, here, through :class:`~agent.profile_checks.
SettingValues`; the predicates then compare plain values and take microseconds.

Time conditions (``hours_within``, ``hours_outside``, ``working_day``, ``holiday``) are
judged from the decision time in the profile's timezone. When that time cannot be
trusted (``Facts.clock_trusted`` false, :attr:`agent.timebase.TimeBase.trusted`) they are
judged in the holder's favour: they hold on a rule that accepts and do not hold on a rule
that denies (``favour``), so nobody is charged or turned away on the strength of a clock
known to be wrong. See ``docs/rules.md`` (*When the clock is not trusted*).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import time
from typing import TYPE_CHECKING

from agent.profile_checks import Loc, SettingValues
from agent.regions import RegionScope, area_prefix, in_areas

if TYPE_CHECKING:
    from agent.rules import Facts, When

__all__ = ["Predicate", "compile_when", "parse_hours"]


def parse_hours(value: str) -> tuple[time, time]:
    """``'06:00-22:00'`` → (06:00, 22:00). Raises ``ValueError`` for anything else."""
    try:
        a, b = value.split("-")
        return time.fromisoformat(a.strip()), time.fromisoformat(b.strip())
    except ValueError:
        raise ValueError(f"hours must look like '06:00-22:00', got {value!r}") from None


Predicate = Callable[["Facts"], bool]


def _kind_matches(patterns: list[str]) -> Predicate:
    exact = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def match(f: Facts) -> bool:
        return f.kind in exact or (bool(prefixes) and f.kind.startswith(prefixes))

    return match


def _flag(get: Callable[[Facts], bool], want: bool) -> Predicate:
    return lambda f: get(f) == want


def _timed(cond: Predicate, favour: bool) -> Predicate:
    """``cond`` on a trusted clock, else ``favour`` (True on accepting rules)."""
    return lambda f: cond(f) if f.clock_trusted else favour


def compile_when(w: When, s: SettingValues, at: Loc, *, favour: bool = True,
                 scope: RegionScope = RegionScope()) -> list[Predicate]:
    """``w`` as predicates, its setting references resolved through ``s`` (``at`` is the
    ``when`` table's key path, for problems). ``favour`` is what a time condition gives
    on an untrusted clock (True for a rule that accepts); ``scope`` is the profile's
    region for ``card_region``."""
    preds: list[Predicate] = []
    if w.hotlisted is not None:
        preds.append(_flag(lambda f: f.hotlisted, w.hotlisted))
    if w.expired is not None:
        preds.append(_flag(lambda f: f.expired, w.expired))
    if w.policy_stale is not None:
        preds.append(_flag(lambda f: f.policy_stale, w.policy_stale))
    if w.gate_out_of_service is not None:
        preds.append(_flag(lambda f: not f.gate_in_service, w.gate_out_of_service))
    if w.kind is not None:
        preds.append(_kind_matches(w.kind))
    if w.entitled_any is not None:
        names = frozenset(w.entitled_any)
        preds.append(lambda f: not names.isdisjoint(f.entitlements))
    if w.age_at_least is not None:
        min_age = s.number(w.age_at_least, (*at, "age_at_least"))
        preds.append(lambda f: f.age is not None and f.age >= min_age)
    if w.age_below is not None:
        max_age = s.number(w.age_below, (*at, "age_below"))
        preds.append(lambda f: f.age is not None and f.age < max_age)
    if w.repeat_within_s is not None:
        window = s.number(w.repeat_within_s, (*at, "repeat_within_s"))
        # a negative interval (a clock set back) is a repeat, never a new fare
        preds.append(lambda f: f.since_last_tap_s is not None
                     and f.since_last_tap_s < window)
    if w.daily_limit is not None:
        lim, lim_max = w.daily_limit.counter, s.number(w.daily_limit.max,
                                                       (*at, "daily_limit", "max"))
        preds.append(lambda f: f.counters.get(lim, 0) < lim_max)
    if w.daily_count_at_least is not None:
        reached, at_most = w.daily_count_at_least.counter, s.number(
            w.daily_count_at_least.max, (*at, "daily_count_at_least", "max"))
        preds.append(lambda f: f.counters.get(reached, 0) >= at_most)
    if w.hours_outside is not None:
        a, b = parse_hours(s.hours(w.hours_outside, (*at, "hours_outside")))
        preds.append(_timed(lambda f: not (a <= f.now.time() < b), favour))
    if w.slot_count_at_least is not None:
        full, capacity = w.slot_count_at_least.counter, s.number(
            w.slot_count_at_least.max, (*at, "slot_count_at_least", "max"))
        preds.append(lambda f: f.site_counters.get(full, 0) >= capacity)
    if w.reserved is not None:
        want = w.reserved
        preds.append(lambda f: f.reserved is want)
    if w.service is not None:
        services = frozenset(w.service)
        preds.append(lambda f: f.service in services)
    if w.hours_within is not None:
        a2, b2 = parse_hours(s.hours(w.hours_within, (*at, "hours_within")))
        preds.append(_timed(lambda f: a2 <= f.now.time() < b2, favour))
    if w.working_day is not None:
        want_working = w.working_day
        preds.append(_timed(lambda f: f.working_day == want_working, favour))
    if w.holiday is not None:
        want_holiday = w.holiday
        preds.append(_timed(lambda f: f.holiday == want_holiday, favour))
    if w.card_region is not None:
        classes = frozenset(w.card_region)
        preds.append(lambda f: scope.classify(f.region) in classes)
    if w.issued_in is not None:
        areas = tuple(area_prefix(c) for c in w.issued_in)
        preds.append(lambda f: in_areas(f.region, areas))
    return preds


