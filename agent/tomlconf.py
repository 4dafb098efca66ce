"""Load TOML into pydantic models with errors that name the file, line and key.

``tomllib`` keeps no line numbers, so :func:`key_lines` scans the text once and maps each
key path (``("rule", 2, "when", "age_at_least")``) to the line where it is written;
validation errors are then reported as ``profiles/bus.toml:41: rule[2].when.age_at_lest:
Extra inputs are not permitted``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.errors import ConfigurationError

__all__ = ["ConfigFileError", "format_loc", "key_lines", "load_toml_model", "read_utf8"]

M = TypeVar("M", bound=BaseModel)

# Linear: no two parts of either pattern can match the same characters (a header with
# lazy ``\s*([^\]]+?)\s*`` took cubic time: 8 minutes on "[" and 8,000 spaces).
_HEADER = re.compile(r"^\s*(\[\[?)([^\]]+)\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r'^\s*((?:[A-Za-z0-9_\-]+|"[^"]*")(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"))*)\s*=')


class ConfigFileError(ConfigurationError):
    """A configuration or profile file is invalid. ``problems`` lists ``file:line: key: msg``."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: invalid configuration\n  " + "\n  ".join(problems))


def _split_key(key: str) -> list[str]:
    return [p.strip().strip('"') for p in re.findall(r'"[^"]*"|[^.]+', key)]


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map every key path written in ``text`` to its 1-based line number.

    Arrays of tables get their index (``[[rule]]`` → ``("rule", 0)``, ``("rule", 1)``…).
    Keys inside inline tables map to the line of the inline table's key.
    """
    lines: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    for n, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            parts = tuple(_split_key(m.group(2).strip()))
            if m.group(1) == "[[":
                idx = counts.get(parts, 0)
                counts[parts] = idx + 1
                table = (*parts, idx)
            else:
                table = parts
            lines.setdefault(table, n)
            continue
        k = _KEY.match(line)
        if k:
            path = table + tuple(_split_key(k.group(1)))
            lines.setdefault(path, n)
    return lines


def format_loc(loc: tuple[str | int, ...]) -> str:
    """``("rule", 2, "when")`` → ``rule[2].when``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def read_utf8(path: Path) -> str:
    """The text of the file at ``path``. Raises :class:`ConfigFileError`: unreadable, or
    ``file:line`` of the first byte that is not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigFileError(path, [f"{path}: cannot read: {err.strerror or err}"]) from err
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigFileError(path, [f"{path}:{line}: not UTF-8 text (byte "
                                     f"0x{raw[err.start]:02x})"]) from None


def _deepest_line(text: str) -> int:
    """The 1-based line where brackets and braces are nested deepest (strings and
    comments are not told apart: this only points the operator at the place)."""
    depth = deepest = 0
    where = 1
    for n, line in enumerate(text.splitlines(), 1):
        for ch in line:
            if ch in "[{":
                depth += 1
                if depth > deepest:
                    deepest, where = depth, n
            elif ch in "]}":
                depth -= 1
    return where


def load_toml_model(path: str | Path, model: type[M], *, text: str | None = None) -> M:
    """Parse the TOML file at ``path`` and validate it as ``model``.

    Raises :class:`ConfigFileError` naming file, line and key for each problem, and for
    unreadable files, bytes that are not UTF-8 (``file:line``), TOML syntax errors and
    arrays or inline tables nested too deep to parse (``file:line``). Nothing else, for
    any content of the file.
    """
    path = Path(path)
    if text is None:
        text = read_utf8(path)
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigFileError(path, [f"{path}: TOML syntax error: {err}"]) from err
    except RecursionError:
        raise ConfigFileError(path, [f"{path}:{_deepest_line(text)}: arrays or inline tables "
                                     "nested too deep"]) from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = key_lines(text)
        problems = []
        for e in err.errors():
            loc = tuple(e["loc"])
            line = _line_for(lines, loc)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {format_loc(loc)}: {e['msg']}")
        raise ConfigFileError(path, problems) from err
