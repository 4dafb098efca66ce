"""A :class:`~sync.hub.reports.Report` as text, JSON, CSV or an Excel workbook.

Text pads columns by display width (a CJK route or operator name takes two columns a
character, :mod:`agent.textcols`); CSV is UTF-8 with a byte-order mark so Excel opens
Chinese text correctly; XLSX (``openpyxl``) has the table with a totals row on sheet
``report`` and what was asked (timezone, period, filters) on sheet ``about``. Amounts
stay integer fen everywhere: the column names say so.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from agent.textcols import display_width, pad
from sync.hub.reports import Report

__all__ = ["FORMATS", "render_csv", "render_json", "render_text", "write_xlsx"]

FORMATS = ("text", "json", "csv", "xlsx")


def _about(report: Report) -> list[tuple[str, str]]:
    return [(k, "" if v is None else (",".join(v) if isinstance(v, list | tuple) else str(v)))
            for k, v in report.meta.items()]


def render_text(report: Report) -> str:
    """An aligned table with a totals line, under one line saying what was asked."""
    meta = dict(_about(report))
    about = "  ".join(f"{k}: {meta[k] or ('(all)' if k == 'operator' else '-')}" for k in (
        "statement", "operator", "month", "tz", "from", "to", "from_utc", "to_utc")
        if k in meta and (meta[k] or k == "operator"))
    groups = [c for c in report.columns if c not in report.totals]
    cells = [[("-" if row.get(c) in ("", None) else str(row[c])) for c in report.columns]
             for row in report.rows]
    total = ["total" if i == 0 else "" for i in range(len(groups))]
    total += [str(report.totals[c]) for c in report.columns[len(groups):]]
    widths = [max([display_width(c)] + [display_width(r[i]) for r in [*cells, total]])
              for i, c in enumerate(report.columns)]

    def line(values: list[str]) -> str:
        return "  ".join(pad(v, w, "<" if i < len(groups) else ">")
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    out = [about] if about else []
    out.append(line(list(report.columns)))
    out += [line(r) for r in cells]
    out.append(line(total))
    return "\n".join(out)


def render_json(report: Report) -> str:
    """``{"columns", "rows", "totals", "meta"}`` as indented JSON (UTF-8 text)."""
    return json.dumps({"columns": report.columns, "rows": report.rows,
                       "totals": report.totals, "meta": report.meta},
                      indent=2, ensure_ascii=False)


def render_csv(report: Report) -> str:
    """A header row, one row per report row, and a last row ``total`` (first column)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(report.columns)
    for row in report.rows:
        w.writerow([row.get(c, "") for c in report.columns])
    w.writerow(_total_row(report))
    return "\ufeff" + buf.getvalue()


def _total_row(report: Report) -> list[Any]:
    groups = len(report.columns) - len(report.totals)
    head: list[Any] = ["total"] + [""] * (groups - 1) if groups else []
    return head + [report.totals[c] for c in report.columns[groups:]]


def write_xlsx(report: Report, path: Path) -> None:
    """Write the report to ``path`` as an Excel workbook (numbers as numbers). Raises
    ``OSError`` if the file cannot be written."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "report"
    ws.append(list(report.columns))
    for row in report.rows:
        ws.append([row.get(c, "") for c in report.columns])
    ws.append(_total_row(report))
    bold = Font(bold=True)
    for cell in ws[1]:
        cell.font = bold
    for cell in ws[ws.max_row]:
        cell.font = bold
    ws.freeze_panes = "A2"
    for i, col in enumerate(report.columns, start=1):
        width = max([display_width(col)] + [display_width(str(r.get(col, "")))
                                            for r in report.rows[:1000]])
        ws.column_dimensions[ws.cell(1, i).column_letter].width = min(width + 2, 60)
    about = wb.create_sheet("about")
    for key, value in _about(report):
        about.append([key, value])
    wb.save(path)
