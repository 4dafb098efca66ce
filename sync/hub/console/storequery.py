"""Read-only queries of the hub store for the console and ``/metrics`` that stay cheap as
the store grows: they read the per-terminal and per-problem tables the ingest maintains,
never ``GROUP BY`` over every record (``HubStore.report()`` does, which takes seconds at
10 million records: too slow for a page or a scrape every 15 s).

One SQL text serves both backends (``?`` placeholders, turned into ``%s`` for
PostgreSQL); each call reads on a connection of its own, so the store's own connection
keeps ingesting. Times come back as seconds since the epoch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.journal import utc_stamp
from sync.hub.store import HubStore, SqliteHubStore

__all__ = ["problems", "read", "store_totals", "terminal_counts", "terminal_states"]


def read(store: HubStore, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query on ``store`` (SQLite file or PostgreSQL). Raises
    ``sqlite3.Error`` / ``psycopg.Error``, ``TypeError`` for another kind of store."""
    if isinstance(store, SqliteHubStore):
        db = sqlite3.connect(store.path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return list(db.execute(sql, tuple(params)))
        finally:
            db.close()
    conninfo = getattr(store, "_conninfo", None)
    if conninfo is None:
        raise TypeError(f"no console queries for {type(store).__name__}")
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        return list(conn.execute(sql.replace("?", "%s"), tuple(params)))


def _seconds(value: Any) -> float | None:
    """A REAL (SQLite) or timestamptz (PostgreSQL) as seconds since the epoch."""
    if value is None:
        return None
    return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)


def terminal_states(store: HubStore) -> dict[str, dict[str, Any]]:
    """What :func:`sync.hub.fleet.fleet_rows` reads of the hub side, per terminal:
    ``contiguous_seq``, ``epoch``, ``last_seen`` (RFC 3339) and the last ``status``."""
    out: dict[str, dict[str, Any]] = {}
    for t, contig, epoch, seen, status in read(
            store, "SELECT terminal, contiguous_seq, epoch, last_seen, status FROM terminals"):
        at = _seconds(seen)
        out[t] = {"contiguous_seq": int(contig), "epoch": epoch or "",
                  "last_seen": None if at is None else utc_stamp(at),
                  "status": json.loads(status) if status else None}
    return out


def store_totals(store: HubStore) -> dict[str, Any]:
    """``records``, ``duplicates_rejected``, ``chain_breaks`` and ``rejected`` (by kind)."""
    records, dups = read(store, "SELECT coalesce(sum(records), 0), coalesce(sum(duplicates), "
                                "0) FROM terminals")[0]
    breaks = read(store, "SELECT count(*) FROM chain_breaks")[0][0]
    rejected = {k: int(n) for k, n in read(
        store, "SELECT kind, sum(count) FROM rejects GROUP BY kind ORDER BY kind")}
    return {"records": int(records), "duplicates_rejected": int(dups),
            "chain_breaks": int(breaks), "rejected": rejected}


def terminal_counts(store: HubStore, terminal: str) -> dict[str, Any]:
    """One terminal's records by product and reason (the primary key's range), its
    latest chain breaks and its rejects."""
    counts = [{"product": p, "reason": r, "count": int(n)} for p, r, n in read(
        store, "SELECT product, reason, count(*) FROM records WHERE terminal=? "
               "GROUP BY product, reason ORDER BY product, reason", (terminal,))]
    breaks = [{"epoch": e, "seq": int(s), "problem": p} for e, s, p in read(
        store, "SELECT epoch, seq, problem FROM chain_breaks WHERE terminal=? "
               "ORDER BY id DESC LIMIT 100", (terminal,))]
    rejects = [{"kind": k, "count": int(n), "last_detail": d} for k, n, d in read(
        store, "SELECT kind, count, last_detail FROM rejects WHERE terminal=? ORDER BY kind",
        (terminal,))]
    return {"counts": counts, "breaks": breaks, "rejects": rejects}


def problems(store: HubStore, limit: int = 200) -> dict[str, Any]:
    """The latest ``limit`` chain breaks, every reject row, and the totals."""
    breaks = [{"terminal": t, "epoch": e, "seq": int(s), "problem": p} for t, e, s, p in read(
        store, "SELECT terminal, epoch, seq, problem FROM chain_breaks ORDER BY id DESC "
               "LIMIT ?", (limit,))]
    rejects = [{"terminal": t, "kind": k, "count": int(n), "last_detail": d}
               for t, k, n, d in read(store, "SELECT terminal, kind, count, last_detail FROM "
                                             "rejects ORDER BY kind, terminal")]
    return {"breaks": breaks, "rejects": rejects, "totals": store_totals(store)}
