"""Code schemes by prefix (多码融合): one registry, each scheme verifies its own codes.

A scheme claims one or more text prefixes (``YKT1:`` for our own signed codes); the
:class:`SchemeRegistry` picks the longest matching prefix. A scheme returns a
:class:`~agent.model.Credential` or a :class:`~agent.model.Rejection` and must never raise
for bad input: it is handed whatever a camera or scanner read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from agent.model import Credential, Reason, Rejection

__all__ = ["CodeScheme", "SchemeRegistry"]


@runtime_checkable
class CodeScheme(Protocol):
    """A code scheme. ``prefixes`` are matched case-sensitively at the start of the text."""

    kind: str                      # credential kind, e.g. "qr:ykt1"
    prefixes: tuple[str, ...]

    def verify(self, text: str, *, now: float, clock_quality: str) -> Credential | Rejection:
        """Verify ``text`` (which starts with one of :attr:`prefixes`) at wall time ``now``."""
        ...


class SchemeRegistry:
    """Prefix → scheme, longest prefix first. Thread-safe to read while schemes are added."""

    def __init__(self, schemes: Iterable[CodeScheme] = ()) -> None:
        self._lock = threading.Lock()
        self._table: tuple[tuple[str, CodeScheme], ...] = ()
        for s in schemes:
            self.register(s)

    def register(self, scheme: CodeScheme) -> None:
        """Add ``scheme``; raises ``ValueError`` if one of its prefixes is already taken."""
        with self._lock:
            taken = {p for p, _ in self._table}
            for p in scheme.prefixes:
                if not p:
                    raise ValueError(f"scheme {scheme.kind!r} has an empty prefix")
                if p in taken:
                    raise ValueError(f"code prefix {p!r} is already registered")
            rows = list(self._table) + [(p, scheme) for p in scheme.prefixes]
            rows.sort(key=lambda r: -len(r[0]))
            self._table = tuple(rows)

    def find(self, text: str) -> CodeScheme | None:
        """The scheme whose prefix starts ``text``, or None."""
        for prefix, scheme in self._table:
            if text.startswith(prefix):
                return scheme
        return None

    @property
    def prefixes(self) -> list[str]:
        return [p for p, _ in self._table]

    def verify(self, text: str, *, now: float, clock_quality: str) -> Credential | Rejection:
        """Dispatch to the matching scheme; ``UNSUPPORTED_CODE`` when none matches."""
        scheme = self.find(text)
        if scheme is None:
            return Rejection(Reason.UNSUPPORTED_CODE, "unknown_prefix")
        return scheme.verify(text, now=now, clock_quality=clock_quality)
