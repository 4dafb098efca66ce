"""Generation files of the policy store: a big snapshot loaded beside the taps, then
switched to atomically.

A big snapshot is loaded into a new file (a *generation*, ``store.db.g<version>-<token>``)
in the background (:func:`build_generation`), then made current by atomically replacing
the pointer file ``store.db.current`` (:func:`switch_generation`); readers move to it on
:meth:`agent.store.PolicyStore.refresh`. Without a pointer file the data lives in
``store.db`` itself. A power loss leaves the pointer naming either the old or the new,
complete generation; unfinished ``*.staging`` files are removed by
:func:`collect_garbage`.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import sqlite_utils

from agent.store_schema import PolicyInfo, StoreError, migrate, write_info

__all__ = ["Generation", "active_generation", "build_generation", "collect_garbage",
           "switch_generation"]


def _pointer(base: Path) -> Path:
    return base.with_name(base.name + ".current")


def active_generation(base: str | Path) -> Path:
    """The file holding the current data of the store ``base`` (``base`` itself when no
    generation switch has happened). Raises :class:`StoreError` if the pointer names a
    file that does not exist."""
    base = Path(base)
    ptr = _pointer(base)
    try:
        name = ptr.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return base
    gen = base.with_name(name)
    if not name or "/" in name or not gen.exists():
        raise StoreError(f"{ptr} names a missing generation {name!r}; restore it or "
                         "remove the pointer to fall back to " + base.name)
    return gen


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Generation(NamedTuple):
    """A generation file built by :func:`build_generation` and the rows it holds."""

    path: Path
    counts: dict[str, int]          # rows inserted per table: entitlements, hotlist


def build_generation(
    base: str | Path,
    *,
    entitlements: Iterable[Sequence[Any]],
    hotlist: Iterable[Sequence[Any]],
    info: PolicyInfo,
    artifacts: Mapping[str, tuple[str, bytes]] | None = None,
    batch_size: int = 20_000,
    progress: Callable[[str, int], None] | None = None,
) -> Generation:
    """Load a complete snapshot into a NEW generation file next to ``base``; return it
    with the number of rows inserted into each table (no second counting pass).

    Rows are tuples in column order, streamed in batches of ``batch_size`` (memory stays
    bounded: a few MiB whatever the size; sorted input loads fastest). The file is built
    without a journal (nothing reads it yet), fsynced, switched to WAL and renamed from
    ``*.staging`` to its final name. It is not current until :func:`switch_generation`.
    ``progress(table, rows_so_far)`` is called after each batch. Raises ``sqlite3.Error``
    (e.g. duplicate keys, full disk); the staging file is then removed.
    """
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    final = base.with_name(f"{base.name}.g{info.version}-{secrets.token_hex(4)}")
    staging = final.with_name(final.name + ".staging")
    conn = sqlite3.connect(staging, isolation_level=None)
    counts: dict[str, int] = {}
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-16384")   # 16 MiB
        migrate(sqlite_utils.Database(conn))
        conn.execute("BEGIN")
        for table, rows in (("entitlements", entitlements), ("hotlist", hotlist)):
            n = 0
            batch: list[Sequence[Any]] = []
            sql = f"INSERT INTO {table} VALUES (?, ?, ?, ?)"
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_size:
                    conn.executemany(sql, batch)
                    n += len(batch)
                    batch.clear()
                    if progress:
                        progress(table, n)
            conn.executemany(sql, batch)
            n += len(batch)
            counts[table] = n
            if progress:
                progress(table, n)
        for name, (digest, body) in (artifacts or {}).items():
            conn.execute("INSERT INTO artifacts VALUES (?, ?, ?)", (name, digest, body))
        write_info(conn, info)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, final)
        _fsync_dir(final.parent)
    except BaseException:
        conn.close()
        staging.unlink(missing_ok=True)
        raise
    return Generation(final, counts)


def switch_generation(base: str | Path, generation: Path) -> None:
    """Make ``generation`` current: write the pointer atomically (temp file, fsync, rename,
    fsync the directory). A crash leaves either the old or the new pointer."""
    base = Path(base)
    ptr = _pointer(base)
    tmp = ptr.with_name(ptr.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(generation.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ptr)
    _fsync_dir(ptr.parent)


def collect_garbage(base: Path, keep: Path) -> list[Path]:
    """Delete the generations of the store ``base`` (and unfinished ``*.staging`` files,
    a leftover pointer ``*.tmp``) other than ``keep``; return the removed paths."""
    removed = []
    candidates = [f for f in base.parent.glob(base.name + ".g*")
                  if not f.name.endswith(("-wal", "-shm", "-journal"))]
    if keep != base:
        candidates.append(base)
    for f in candidates:
        if f == keep:
            continue
        for p in (f, f.with_name(f.name + "-wal"), f.with_name(f.name + "-shm"),
                  f.with_name(f.name + "-journal")):
            if p.exists():
                p.unlink()
                removed.append(p)
    tmp = _pointer(base).with_name(_pointer(base).name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    return removed
