"""Data parts: entitlements and hotlist snapshots and deltas as gzip'd tab-separated lines.

A part starts with a header line naming its kind and mode, so a part can never be used in
another slot (``#ykt-part v1 hotlist delta``). Then one line per row::

    entitlements:  +  holder_key  name  valid_from  valid_until      (snapshot, delta)
                   -  holder_key  name                                (delta only)
    hotlist:       +  key  kind  reason  listed
                   -  key

Keys are the 32-hex-digit keyed hashes of :mod:`agent.pseudonym`; a raw identifier is
refused (a part with a line whose key is not 32 lower-case hex digits is malformed).
Snapshots are sorted by key (they then load at append speed). Gzip is written with
``mtime=0`` so the same rows always give the same bytes (and the same hash).
Reading streams line by line: memory stays bounded whatever the size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

from agent.policy.errors import BundleRefused, Refusal

__all__ = ["DataKind", "Mode", "PartWriter", "read_rows", "write_part"]

DataKind = Literal["entitlements", "hotlist"]
Mode = Literal["snapshot", "delta"]
_KEY = re.compile(r"^[0-9a-f]{32}$")
_FIELDS = {"entitlements": 4, "hotlist": 4}
_REMOVE_FIELDS = {"entitlements": 2, "hotlist": 1}


def _header(kind: DataKind, mode: Mode) -> str:
    return f"#ykt-part v1 {kind} {mode}\n"


class PartWriter:
    """Write a part line by line (``add``/``remove``), then :meth:`close`. Raises
    ``ValueError`` for a row that is not pseudonymous or holds a tab or newline."""

    def __init__(self, out: IO[bytes], kind: DataKind, mode: Mode) -> None:
        self.kind, self.mode = kind, mode
        # filename="": no file name in the header (GzipFile would take out.name)
        self._gz = gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0, compresslevel=6)
        self._text = io.TextIOWrapper(self._gz, encoding="utf-8", newline="\n")
        self._text.write(_header(kind, mode))
        self.rows = 0

    def _line(self, op: str, fields: tuple[str, ...]) -> None:
        if not _KEY.match(fields[0]):
            raise ValueError(f"{self.kind} key {fields[0][:8]!r}… is not a 32-hex keyed hash")
        for f in fields:
            if "\t" in f or "\n" in f:
                raise ValueError(f"{self.kind} field contains a tab or newline")
        self._text.write(op + "\t" + "\t".join(fields) + "\n")
        self.rows += 1

    def add(self, *fields: str | None) -> None:
        """Add a row: entitlements ``holder_key, name, valid_from, valid_until``;
        hotlist ``key, kind, reason, listed`` (None is written as empty)."""
        self._line("+", tuple("" if f is None else f for f in fields))

    def remove(self, *fields: str) -> None:
        """Remove a row (deltas): entitlements ``holder_key, name``; hotlist ``key``."""
        if self.mode != "delta":
            raise ValueError("a snapshot cannot remove rows")
        self._line("-", fields)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()
        self._gz.close()


def write_part(path: str | Path, kind: DataKind, mode: Mode,
               adds: Iterable[tuple[str, ...]], removes: Iterable[tuple[str, ...]] = ()
               ) -> int:
    """Write a whole part to ``path``; return the number of rows."""
    with open(path, "wb") as f:
        w = PartWriter(f, kind, mode)
        for r in removes:
            w.remove(*r)
        for r in adds:
            w.add(*r)
        w.close()
        return w.rows


def read_rows(path: str | Path, kind: DataKind, mode: Mode, op: str | None = None
              ) -> Iterator[tuple[str, ...]]:
    """Stream rows of the part at ``path``: tuples without the op (``+`` rows have 4
    fields, ``-`` rows 2 or 1); only rows of ``op`` when given, else ``(op, *fields)``.

    Raises :class:`BundleRefused`: ``mix_and_match`` when the header names another kind
    or mode, ``malformed`` for a bad line (non-hashed key, wrong field count, bad gzip,
    damaged deflate data, text that is not UTF-8); never anything else for bad bytes.
    """
    want = _header(kind, mode)
    n_add, n_rm = _FIELDS[kind], _REMOVE_FIELDS[kind]
    key = _KEY.match
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
            head = f.readline()
            if head != want:
                raise BundleRefused(Refusal.MIX_AND_MATCH,
                                    f"part {Path(path).name[:12]} is {head.strip()!r}, "
                                    f"expected {want.strip()!r}")
            for lineno, line in enumerate(f, 2):
                parts = line.rstrip("\n").split("\t")
                o = parts[0]
                fields = parts[1:]
                if not ((o == "+" and len(fields) == n_add)
                        or (o == "-" and mode == "delta" and len(fields) == n_rm)) \
                        or not key(fields[0]):
                    raise BundleRefused(Refusal.MALFORMED,
                                        f"{kind} {mode} part line {lineno} is malformed")
                if op is None:
                    yield (o, *fields)
                elif o == op:
                    yield tuple(fields)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        # zlib.error: deflate data damaged in a way gzip's own checks do not turn into
        # BadGzipFile (an OSError), e.g. a part corrupted on disk after its hash check
        raise BundleRefused(Refusal.MALFORMED, f"{kind} part unreadable: {err}") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
