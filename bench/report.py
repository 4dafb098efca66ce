"""Keep each benchmark's latest results in its own section of ``bench/README.md``.

A section is delimited by ``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->``; rewriting one
leaves the others alone, so benchmarks can be run in any order.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

README = Path(__file__).with_name("README.md")


def machine() -> str:
    """One line describing where the numbers were taken."""
    import os

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def update_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of bench/README.md with ``markdown``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = README.read_text(encoding="utf-8") if README.exists() else (
        "# Benchmarks\n\nLatest results of each benchmark (`make bench` runs them all). "
        "Budgets are checked here, never by timing assertions in tests.\n")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")
