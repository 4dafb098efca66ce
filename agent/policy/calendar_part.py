"""The bundle's ``calendar`` part on the terminal: parsed before the switch, then handed
to the engine between two taps.

The part is the canonical JSON of :class:`agent.workdays.WorkCalendar` (holidays and
make-up working days, 调休). A bundle whose calendar does not parse is refused
(``malformed``) and the calendar in force stays; a bundle without one leaves the
terminal on the weekday rule (Monday–Friday working). A rule set with ``working_day`` or
``holiday`` conditions and no calendar in force is flagged (a warning in the log and in
``ykt config validate``): it still decides, by the weekday rule, but knows no holiday.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.policy.errors import BundleRefused, Refusal
from agent.workdays import WorkCalendar, parse_calendar_part

if TYPE_CHECKING:
    from agent.policy.apply import AppliedPolicy
    from agent.rules import RuleSet

__all__ = ["NO_CALENDAR_WARNING", "apply_calendar", "calendar_warning", "flag_without_policy",
           "read_calendar", "stored_calendar"]

log = logging.getLogger(__name__)

NO_CALENDAR_WARNING = ("profile {profile!r} has working_day/holiday conditions but no "
                       "calendar part is in force: Monday–Friday count as working days and "
                       "no holiday or make-up working day (调休) is known")


def read_calendar(data: bytes | None) -> WorkCalendar | None:
    """The calendar in a part's bytes (None for no part). Raises :class:`BundleRefused`
    (``malformed``) for a part that does not parse or contradicts itself."""
    if data is None:
        return None
    try:
        return parse_calendar_part(data)
    except ValueError as err:
        raise BundleRefused(Refusal.MALFORMED, str(err)[:300]) from None


def stored_calendar(store: Any) -> WorkCalendar | None:
    """The applied bundle's calendar as the store holds it (startup); None if it has none
    or it no longer parses (logged: the terminal then uses the weekday rule)."""
    try:
        return read_calendar(store.artifact("calendar"))
    except BundleRefused as err:
        log.error("stored calendar of %s unusable: %s", store.info.label, err)
        return None


def calendar_warning(ruleset: RuleSet, calendar: WorkCalendar | None) -> str:
    """The flag for a rule set that needs a calendar and has none ("" if fine)."""
    if ruleset.uses_calendar and calendar is None:
        return NO_CALENDAR_WARNING.format(profile=ruleset.profile.name)
    return ""


def flag_without_policy(engine: Any) -> None:
    """A terminal that follows no policy channel has no calendar: flag rules needing one."""
    engine.calendar_flag = calendar_warning(engine.ruleset, None)
    if engine.calendar_flag:
        log.warning(engine.calendar_flag)


def apply_calendar(engine: Any, applied: AppliedPolicy) -> None:
    """Give the engine the bundle's calendar (None: the weekday rule) and flag a rule set
    that needs one. Called by :func:`agent.policy.wiring.engine_listener` between taps."""
    if engine.calendar != applied.calendar:
        log.info("calendar now %s (policy %s)", applied.calendar.name if applied.calendar
                 else "none: the weekday rule", applied.info.label)
    engine.calendar = applied.calendar
    warning = calendar_warning(engine.ruleset, applied.calendar)
    if warning and warning != getattr(engine, "calendar_flag", ""):
        log.warning(warning)                    # once, not at every bundle
    engine.calendar_flag = warning
