"""The per-holder counters and passback times, kept as an append-only log beside the records.

Each tap that counts something (a free ride, a slot, a queue number) or remembers a
passback time writes one row of ``effects``, keyed by its record's ``seq``, in the same
transaction as the record (``docs/decisions.md`` 1 and 52). The current values are kept in
memory and rebuilt from that log when the journal opens. So a tap's commit dirties only
the newest pages of two append-only tables, and a checkpoint copies a few neighbouring
pages to the database file — not, as when the counters were B-trees keyed by random holder
hashes, one random page per holder per tap (~35 random 4 KiB writes per 16 taps, 23 ms of
an A1 card's write IOPS that the next tap queued behind: decision 51).

An ``effects`` row's ``data`` is compact JSON: ``{"c": [[holder, counter, day, delta], …],
"p": [credential_key, scope]}``, either key left out when empty; ``ts`` is the record's
time (epoch s), which the passback entry takes. Journals written before this log held the
values in two tables, ``counters`` and ``last_taps``; :func:`load` moves them into the log
(rows with negative ``seq``, before every tap) and drops the tables, in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Mapping

__all__ = ["SCHEMA", "CUT_KEY", "Effects", "load", "row_for"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    seq  INTEGER PRIMARY KEY,
    ts   REAL    NOT NULL,
    data TEXT    NOT NULL
);
"""

CUT_KEY = "effects_cut"
"""The journal meta key of the last prune's cut: ``{"day": "YYYY-MM-DD", "ts": epoch s}``.
Counters of earlier days and passback times before ``ts`` are forgotten, also when the
log still holds their rows (it is pruned by whole ``seq`` prefixes)."""

Counters = Mapping[tuple[str, str, str], int]


class Effects:
    """The counters and passback times in memory. Not thread-safe: the journal's writer
    lock guards every call."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.last: dict[tuple[str, str], float] = {}

    def apply(self, ts: float, counters: Counters | None,
              last_tap: tuple[str, str] | None) -> None:
        """Apply one tap's effects: a counter moves by its delta and never below 0 (a
        counter not yet held starts at the delta, as the SQL upsert did)."""
        for (holder, counter, day), delta in (counters or {}).items():
            key = (holder, sys.intern(counter), sys.intern(day))   # a few names and days
            old = self.counts.get(key)
            self.counts[key] = delta if old is None else max(0, old + delta)
        if last_tap is not None:
            self.last[(last_tap[0], last_tap[1])] = ts

    def cut(self, day: str, ts: float) -> None:
        """Forget counters of days before ``day`` and passback times before ``ts``."""
        self.counts = {k: n for k, n in self.counts.items() if k[2] >= day}
        self.last = {k: t for k, t in self.last.items() if t >= ts}


def row_for(counters: Counters | None, last_tap: tuple[str, str] | None) -> str | None:
    """The ``data`` of a tap's ``effects`` row, or None when it has no effect to keep."""
    data: dict[str, object] = {}
    if counters:
        data["c"] = [[h, c, d, n] for (h, c, d), n in counters.items()]
    if last_tap is not None:
        data["p"] = [last_tap[0], last_tap[1]]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) if data else None


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _migrate(db: sqlite3.Connection, now: float) -> None:
    """Move a journal's ``counters`` and ``last_taps`` tables into the log (negative seqs,
    in the order they are read back: counters, then passback times) and drop them. A
    counter's row is stamped ``now`` (the newest record's time), so a prune keeps it as
    long as it keeps that record's effects."""
    tables = _tables(db)
    if not {"counters", "last_taps"} & tables:
        return
    rows: list[tuple[float, str]] = []
    if "counters" in tables:
        rows += [(now, json.dumps({"c": [[h, c, d, n]]}, ensure_ascii=False))
                 for h, c, d, n in db.execute(
                     "SELECT holder_key, counter, day, count FROM counters")]
    if "last_taps" in tables:
        rows += [(float(ts), json.dumps({"p": [k, s]}, ensure_ascii=False))
                 for k, s, ts in db.execute("SELECT credential_key, scope, ts FROM last_taps")]
    low = db.execute("SELECT min(seq) FROM effects").fetchone()[0]
    start = min(0, low or 0) - len(rows)
    with db:
        db.executemany("INSERT INTO effects VALUES (?,?,?)",
                       [(start + i, ts, data) for i, (ts, data) in enumerate(rows)])
        db.execute("DROP TABLE IF EXISTS counters")
        db.execute("DROP TABLE IF EXISTS last_taps")


def load(db: sqlite3.Connection, cut: str | None, now: float) -> Effects:
    """Create or migrate the log in ``db`` and rebuild the values from it, in ``seq``
    order, then forget what the last prune's ``cut`` (the meta value) forgot; ``now`` is
    the newest record's time (epoch s), for a migration. Raises
    :class:`sqlite3.Error` (the journal reports it) or :class:`ValueError` on a row that
    is not this format."""
    db.executescript(SCHEMA)
    _migrate(db, now)
    fx = Effects()
    for ts, text in db.execute("SELECT ts, data FROM effects ORDER BY seq"):
        data = json.loads(text)
        counters = {(h, c, d): int(n) for h, c, d, n in data.get("c", ())}
        p = data.get("p")
        fx.apply(float(ts), counters, None if p is None else (p[0], p[1]))
    if cut is not None:
        c = json.loads(cut)
        fx.cut(str(c["day"]), float(c["ts"]))
    return fx
