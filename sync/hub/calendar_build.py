"""Building the ``calendar`` policy part on the hub from a city's calendar file.

The source is TOML (:func:`agent.workdays.calendar_from_source`: holidays as
``[[holiday]]`` ranges with their make-up working days, 调休) or an already built JSON
part; either way it is checked (dates inside the covered years, a make-up working day
only on a weekend, no day both a holiday and a working day) and written as canonical
JSON, so the same calendar always gives the same bytes and hash. ``ykt hub policy build
--calendar FILE``; a build without ``--calendar`` keeps the last published one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.workdays import calendar_from_source, parse_calendar_part

__all__ = ["calendar_bytes", "calendar_parts"]


def calendar_bytes(source: Path) -> bytes:
    """The part bytes for the calendar in ``source`` (``.toml`` or a JSON part).
    Raises ``ValueError`` naming the file and the problem, ``OSError`` if unreadable."""
    raw = source.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source}: calendar is not UTF-8") from None
    if source.suffix == ".toml":
        cal = calendar_from_source(text, str(source))
    else:
        try:
            cal = parse_calendar_part(raw)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    return cal.part_bytes()


def calendar_parts(source: Path | None, file_part: Callable[[str, str, bytes], Any]
                   ) -> dict[str, Any]:
    """``{"calendar": PartRef}`` built with the repo's ``file_part`` writer, or ``{}``
    when no calendar file is given (the last published part is kept then)."""
    if source is None:
        return {}
    return {"calendar": file_part("calendar", "calendar", calendar_bytes(source))}
