"""Charts as inline SVG, rendered on the server: no script, no CDN, nothing to load.

One kind is enough for the console's reports: a vertical bar chart with a label under
each bar and the value over it. Text is escaped; sizes are in SVG user units (px).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bar_chart"]


def bar_chart(title: str, labels: Sequence[str], values: Sequence[int], *,
              width: int = 720, height: int = 220, unit: str = "") -> Markup:
    """An ``<svg>`` bar chart of ``values`` (non-negative integers) under ``labels``.
    ``title`` becomes the chart's accessible name; an empty series says so."""
    if len(labels) != len(values):
        raise ValueError("one label per value")
    top, bottom, left = 24, 40, 8
    plot_h = height - top - bottom
    n = max(1, len(values))
    slot = (width - 2 * left) / n
    bar_w = max(2.0, slot * 0.7)
    peak = max(values, default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    if not values:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">'
                     'no data in this range</text>')
    small = "small" if n > 16 else "label"
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * value / peak
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h - h
        cx = x + bar_w / 2
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                     f'<title>{escape(label)}: {value}{escape(unit)}</title></rect>')
        parts.append(f'<text x="{cx:.1f}" y="{y - 4:.1f}" text-anchor="middle" '
                     f'class="{small}">{value}</text>')
        parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 14}" text-anchor="middle" '
                     f'class="{small}">{escape(label[:14])}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - left}" '
                 f'y2="{top + plot_h}" class="axis"/></svg>')
    return Markup("".join(parts))
