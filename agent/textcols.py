"""Columns that line up in Chinese: pad and cut text by its display width on a terminal
(a CJK character takes two columns, a combining mark none), using ``wcwidth``'s Unicode
tables rather than ``len()``, which counts characters."""

from __future__ import annotations

from wcwidth import wcswidth, wcwidth

__all__ = ["display_width", "pad"]


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes (a non-printable character counts as one)."""
    w = wcswidth(text)
    return w if w >= 0 else sum(max(wcwidth(c), 1) for c in text)


def pad(text: str, width: int, align: str = "<") -> str:
    """``text`` padded with spaces to ``width`` columns (``<`` left, ``>`` right); text
    wider than ``width`` is cut at a character boundary and ends with ``…``."""
    if display_width(text) > width:
        out, used = "", 0
        for ch in text:
            w = max(wcwidth(ch), 0)
            if used + w > width - 1:
                break
            out, used = out + ch, used + w
        text = out + "…"
    fill = " " * (width - display_width(text))
    return fill + text if align == ">" else text + fill
