"""Where the hub keeps what terminals send: the :class:`HubStore` interface and SQLite.

A store ingests one validated batch of one terminal in **one transaction**: records are
inserted idempotently on (terminal, seq); the terminal's contiguous sequence is advanced
as far as records are present, verifying each link of the hash chain on the way
(:func:`chain_problems`); breaks are recorded and the records flagged (never dropped).
:meth:`HubStore.ingest` returns after the commit, with the contiguous seq to acknowledge.

The chain logic (:mod:`sync.hub.chain`) is backend-neutral: this store and the PostgreSQL
one (:mod:`sync.hub.pgstore`) both advance the chain with
:func:`~sync.hub.chain.advance_chain`.
"""

from __future__ import annotations

import abc
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.journal import GENESIS, utc_stamp
from sync.hub.chain import (
    IncomingRecord,
    advance_chain,
    apply_skip,
    chain_problems,
    split_duplicates,
)
from sync.hub.report_rollup import add_sqlite, ensure_sqlite

__all__ = ["HubStore", "IncomingRecord", "IngestResult", "SqliteHubStore", "assemble_report",
           "chain_problems", "decision_fields"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one committed batch did. ``contiguous_seq`` is what the hub acknowledges."""

    contiguous_seq: int
    stored: int
    duplicates: int
    breaks: int
    beyond_gap: int
    contiguous_hash: str = GENESIS


def decision_fields(body: dict[str, Any]) -> tuple[str, str]:
    """``(product, reason)`` of a record body, from ``decision.{product,reason}`` or the
    top-level ``product``/``reason``; empty strings when absent."""
    src = body.get("decision") if isinstance(body.get("decision"), dict) else body
    assert isinstance(src, dict)
    product, reason = src.get("product", ""), src.get("reason", "")
    return (product if isinstance(product, str) else str(product),
            reason if isinstance(reason, str) else str(reason))


def export_line(terminal: str, epoch: str, seq: int, digest: str, flagged: Any, body: str,
                sig: str | None = None) -> str:
    """One ``hub export`` JSON line; ``body`` is the stored canonical text, copied as is;
    ``sig`` (the terminal's signature over this record as a batch head) when stored."""
    signed = "" if sig is None else f',"sig":"{sig}"'
    return (f'{{"terminal":{json.dumps(terminal)},"epoch":"{epoch}","seq":{seq},'
            f'"hash":"{digest}","flagged":{"true" if flagged else "false"}{signed},'
            f'"body":{body}}}')


def terminal_entry(contig: int, batches: int, records: int, dups: int, seen: float | None,
                   status: str | None, beyond: int, first_beyond: int | None,
                   max_seq: int | None) -> dict[str, Any]:
    """A terminal's entry in the report (``beyond``: records stored past the first gap)."""
    return {
        "records": records, "contiguous_seq": contig, "max_seq": max_seq or contig,
        "batches": batches, "duplicates_rejected": dups,
        "gap": None if not beyond else {"missing_from": contig + 1,
                                        "missing_to": (first_beyond or contig + 1) - 1,
                                        "records_beyond": beyond},
        "chain_breaks": 0, "flagged_records": 0,
        "last_seen": None if seen is None else utc_stamp(seen),
        "status": None if status is None else json.loads(status),
    }


def report_from(execute: Callable[[str], Iterable[Any]], terminals: dict[str, Any]
                ) -> dict[str, Any]:
    """Run the report queries both SQL backends share through ``execute`` (SQL → rows)
    and assemble the report around the per-terminal entries already built. Each entry
    gets ``incarnations``: one per epoch of the terminal (``docs/protocol.md`` §10)."""
    for t, e, contig, n, max_seq in execute(
            "SELECT c.terminal, c.epoch, c.contiguous_seq, c.records, "
            "(SELECT max(seq) FROM records r WHERE r.terminal=c.terminal AND "
            "r.epoch=c.epoch) FROM chains c ORDER BY c.terminal, c.first_seen, c.epoch"):
        entry = terminals.setdefault(t, {})
        entry.setdefault("incarnations", []).append(
            {"epoch": e, "records": n, "contiguous_seq": contig, "max_seq": max_seq or contig})
    for t, n in execute("SELECT terminal, count(*) FROM chain_breaks GROUP BY 1"):
        terminals.setdefault(t, {})["chain_breaks"] = n
    for t, n in execute("SELECT terminal, count(*) FROM records WHERE flagged GROUP BY 1"):
        terminals.setdefault(t, {})["flagged_records"] = n
    counts = [{"terminal": t, "product": p, "reason": r, "count": n}
              for t, p, r, n in execute("SELECT terminal, product, reason, count(*) FROM "
                                        "records GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")]
    breaks = [{"terminal": t, "epoch": e, "seq": s, "problem": p} for t, e, s, p in execute(
        "SELECT terminal, epoch, seq, problem FROM chain_breaks ORDER BY id LIMIT 200")]
    rejects = [{"terminal": t, "kind": k, "count": n, "last_detail": d}
               for t, k, n, d in execute("SELECT terminal, kind, count, last_detail FROM "
                                         "rejects ORDER BY kind, terminal")]
    return assemble_report(terminals, counts, breaks, rejects)


def assemble_report(terminals: dict[str, Any], counts: list[dict[str, Any]],
                    breaks: list[dict[str, Any]], rejects: list[dict[str, Any]]
                    ) -> dict[str, Any]:
    """The :meth:`HubStore.report` dict from what a backend queried: per-terminal entries,
    counts by terminal × product × reason, chain breaks and rejects (as in SQLite's)."""
    by_product: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for c in counts:
        by_product[c["product"]] = by_product.get(c["product"], 0) + c["count"]
        by_reason[c["reason"]] = by_reason.get(c["reason"], 0) + c["count"]
    rejected: dict[str, int] = {}
    for r in rejects:
        rejected[r["kind"]] = rejected.get(r["kind"], 0) + r["count"]
    return {
        "totals": {
            "records": sum(c["count"] for c in counts),
            "terminals": len(terminals),
            "duplicates_rejected": sum(t.get("duplicates_rejected", 0)
                                       for t in terminals.values()),
            "chain_breaks": sum(t.get("chain_breaks", 0) for t in terminals.values()),
            "terminals_with_gaps": sum(1 for t in terminals.values() if t.get("gap")),
            "rejected": rejected,
        },
        "terminals": terminals,
        "by_product": by_product,
        "by_reason": by_reason,
        "counts": counts,
        "chain_breaks": breaks,
        "rejects": rejects,
    }


class HubStore(abc.ABC):
    """The hub's durable store. Every method may raise ``OSError``/backend errors."""

    store_id: str
    """This store's incarnation id (random, made with the store; a restored store gets a
    new one from :meth:`reincarnate`). Every v2 ack names it."""

    @abc.abstractmethod
    def ingest(self, terminal: str, records: Sequence[IncomingRecord], epoch: str = "",
               head_sig: str | None = None, skip: tuple[int, int] | None = None
               ) -> IngestResult:
        """Store ``records`` of ``terminal``'s incarnation ``epoch`` idempotently in one
        transaction, verify the chain as far as it is contiguous, commit, and return what
        to acknowledge. ``head_sig`` (the batch's signature) is stored with the last
        record when that record is new; ``skip`` is a verified statement of records lost
        (:func:`~sync.hub.chain.apply_skip`)."""

    @abc.abstractmethod
    def contiguous_seq(self, terminal: str, epoch: str = "") -> int:
        """Highest seq such that every record 1..seq of ``(terminal, epoch)`` is stored."""

    @abc.abstractmethod
    def reincarnate(self) -> str:
        """Give the store a new random id (after a restore from a backup); returns it."""

    @abc.abstractmethod
    def record_reject(self, terminal: str, kind: str, detail: str) -> None:
        """Count a rejected message or record (``kind`` e.g. ``malformed_payload``,
        ``unknown_terminal``); ``detail`` is kept as the latest example (no personal data)."""

    @abc.abstractmethod
    def record_status(self, terminal: str, status: dict[str, Any]) -> None:
        """Remember a terminal's latest status heartbeat and when it was seen."""

    @abc.abstractmethod
    def export(self) -> Iterator[str]:
        """Every stored record as one JSON line (no newline), ordered by terminal and seq."""

    @abc.abstractmethod
    def report(self) -> dict[str, Any]:
        """Counts by terminal, product and reason; duplicates; breaks; gaps; rejects."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store. Safe to call twice."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    terminal TEXT NOT NULL, epoch TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,
    hash TEXT NOT NULL, body TEXT NOT NULL, product TEXT NOT NULL, reason TEXT NOT NULL,
    flagged INTEGER NOT NULL DEFAULT 0, received REAL NOT NULL, sig TEXT,
    PRIMARY KEY (terminal, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS terminals (
    terminal TEXT PRIMARY KEY, contiguous_seq INTEGER NOT NULL DEFAULT 0,
    contiguous_hash TEXT NOT NULL, batches INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
    last_seen REAL, status TEXT, status_at REAL, epoch TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chains (
    terminal TEXT NOT NULL, epoch TEXT NOT NULL, contiguous_seq INTEGER NOT NULL DEFAULT 0,
    contiguous_hash TEXT NOT NULL, records INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    PRIMARY KEY (terminal, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chain_breaks (
    id INTEGER PRIMARY KEY, terminal TEXT NOT NULL, seq INTEGER NOT NULL,
    problem TEXT NOT NULL, detected REAL NOT NULL, epoch TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rejects (
    terminal TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL,
    last_detail TEXT NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (terminal, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

_SQLITE_SCHEMA = 2
"""``PRAGMA user_version`` of the schema above; 0 with a ``records`` table is version 1."""

_MIGRATE_1_TO_2 = """
ALTER TABLE records RENAME TO records_v1;
CREATE TABLE records (
    terminal TEXT NOT NULL, epoch TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,
    hash TEXT NOT NULL, body TEXT NOT NULL, product TEXT NOT NULL, reason TEXT NOT NULL,
    flagged INTEGER NOT NULL DEFAULT 0, received REAL NOT NULL, sig TEXT,
    PRIMARY KEY (terminal, epoch, seq)
) WITHOUT ROWID;
INSERT INTO records SELECT terminal, '', seq, hash, body, product, reason, flagged,
    received, NULL FROM records_v1;
DROP TABLE records_v1;
ALTER TABLE terminals ADD COLUMN epoch TEXT NOT NULL DEFAULT '';
ALTER TABLE chain_breaks ADD COLUMN epoch TEXT NOT NULL DEFAULT '';
"""


def new_store_id() -> str:
    """A random store incarnation id (32 hex digits)."""
    return secrets.token_hex(16)


class SqliteHubStore(HubStore):
    """:class:`HubStore` in one SQLite file (WAL, ``synchronous=FULL``). Thread-safe.
    A version-1 file (before incarnations) is migrated on open: its records and chains
    get the legacy epoch ``""``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._migrate()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.store_id = str(self._db.execute(
            "SELECT value FROM hub_meta WHERE key='store_id'").fetchone()[0])

    def _migrate(self) -> None:
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        old = db.execute("SELECT 1 FROM sqlite_master WHERE name='records'").fetchone()
        if version == 0 and old is not None:
            log.info("%s: migrating hub store to schema %d (incarnations)", self.path,
                     _SQLITE_SCHEMA)
            for stmt in _MIGRATE_1_TO_2.split(";"):
                if stmt.strip():
                    db.execute(stmt)
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        if version == 0 and old is not None:
            db.execute("INSERT OR IGNORE INTO chains SELECT terminal, '', contiguous_seq, "
                       "contiguous_hash, records, coalesce(last_seen, 0), "
                       "coalesce(last_seen, 0) FROM terminals WHERE batches > 0")
        ensure_sqlite(db, str(self.path))  # the reports' rollup (sync/hub/report_rollup.py)
        db.execute(f"PRAGMA user_version={_SQLITE_SCHEMA}")
        db.execute("INSERT OR IGNORE INTO hub_meta VALUES ('store_id', ?)", (new_store_id(),))

    def reincarnate(self) -> str:
        new = new_store_id()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE hub_meta SET value=? WHERE key='store_id'", (new,))
        self.store_id = new
        return new

    def _chain_row(self, terminal: str, epoch: str, now: float) -> tuple[int, str]:
        row = self._db.execute(
            "SELECT contiguous_seq, contiguous_hash FROM chains WHERE terminal=? AND epoch=?",
            (terminal, epoch)).fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO terminals (terminal, contiguous_hash) "
                             "VALUES (?, ?)", (terminal, GENESIS))
            self._db.execute("INSERT INTO chains (terminal, epoch, contiguous_hash, "
                             "first_seen, last_seen) VALUES (?,?,?,?,?)",
                             (terminal, epoch, GENESIS, now, now))
            return 0, GENESIS
        return int(row[0]), str(row[1])

    def ingest(self, terminal: str, records: Sequence[IncomingRecord], epoch: str = "",
               head_sig: str | None = None, skip: tuple[int, int] | None = None
               ) -> IngestResult:
        now = time.time()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = self._ingest(terminal, epoch, records, head_sig, skip, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return result

    def _ingest(self, terminal: str, epoch: str, records: Sequence[IncomingRecord],
                head_sig: str | None, skip: tuple[int, int] | None, now: float
                ) -> IngestResult:
        db = self._db
        contig, chash = self._chain_row(terminal, epoch, now)
        contig, chash, skipped = apply_skip(contig, chash, skip, records)
        existing: dict[int, str] = {}
        seqs = sorted({r.seq for r in records})
        for i in range(0, len(seqs), 500):  # by the batch's own seqs: bounded work
            part = seqs[i:i + 500]
            existing.update(db.execute(
                f"SELECT seq, hash FROM records WHERE terminal=? AND epoch=? AND seq IN "
                f"({','.join('?' * len(part))})", (terminal, epoch, *part)).fetchall())
        new, duplicates, breaks = split_duplicates(records, existing)
        breaks = skipped + breaks
        head = records[-1].seq if records else None
        rows = []
        for r in new.values():
            product, reason = decision_fields(r.body)
            rows.append((terminal, epoch, r.seq, r.hash, r.canonical, product, reason, now,
                         head_sig if r.seq == head else None))
        db.executemany("INSERT OR IGNORE INTO records (terminal, epoch, seq, hash, body, "
                       "product, reason, received, sig) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        add_sqlite(db, terminal, new.values())
        # advance the contiguous sequence, verifying each link of the chain
        walk = advance_chain(contig, chash, new, lambda lo, hi: db.execute(
            "SELECT seq, hash, body FROM records WHERE terminal=? AND epoch=? AND seq "
            "BETWEEN ? AND ?", (terminal, epoch, lo, hi)))
        contig, chash, flagged = walk.contiguous_seq, walk.contiguous_hash, walk.flagged
        breaks += walk.breaks
        beyond = sum(1 for s in new if s > contig)
        if breaks:
            db.executemany("INSERT INTO chain_breaks (terminal, epoch, seq, problem, detected) "
                           "VALUES (?,?,?,?,?)", [(terminal, epoch, s, p, now)
                                                  for s, p in breaks])
            for s, p in breaks:
                log.warning("chain break: terminal %s epoch %r seq %d: %s", terminal, epoch,
                            s, p)
        if flagged:
            db.executemany("UPDATE records SET flagged=1 WHERE terminal=? AND epoch=? AND "
                           "seq=?", [(terminal, epoch, s) for s in flagged])
        if beyond:
            log.warning("terminal %s: %d records stored beyond a gap after seq %d",
                        terminal, beyond, contig)
        db.execute("UPDATE chains SET contiguous_seq=?, contiguous_hash=?, records=records+?, "
                   "last_seen=? WHERE terminal=? AND epoch=?",
                   (contig, chash, len(new), now, terminal, epoch))
        db.execute("UPDATE terminals SET contiguous_seq=?, contiguous_hash=?, epoch=?, "
                   "batches=batches+1, records=records+?, duplicates=duplicates+?, "
                   "last_seen=? WHERE terminal=?",
                   (contig, chash, epoch, len(new), duplicates, now, terminal))
        return IngestResult(contig, len(new), duplicates, len(breaks), beyond, chash)

    def contiguous_seq(self, terminal: str, epoch: str = "") -> int:
        with self._lock:
            row = self._db.execute("SELECT contiguous_seq FROM chains WHERE terminal=? AND "
                                   "epoch=?", (terminal, epoch)).fetchone()
        return 0 if row is None else int(row[0])

    def record_reject(self, terminal: str, kind: str, detail: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO rejects VALUES (?,?,1,?,?) ON CONFLICT (terminal, kind) DO UPDATE "
                "SET count=count+1, last_detail=excluded.last_detail, last_at=excluded.last_at",
                (terminal, kind, detail[:500], time.time()))

    def record_status(self, terminal: str, status: dict[str, Any]) -> None:
        now = time.time()
        text = json.dumps(status, separators=(",", ":"), ensure_ascii=False)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO terminals (terminal, contiguous_hash, last_seen, status, status_at) "
                "VALUES (?,?,?,?,?) ON CONFLICT (terminal) DO UPDATE SET "
                "last_seen=excluded.last_seen, status=excluded.status, "
                "status_at=excluded.status_at", (terminal, GENESIS, now, text, now))

    def export(self) -> Iterator[str]:
        reader = sqlite3.connect(self.path)
        try:
            cur = reader.execute("SELECT terminal, epoch, seq, hash, flagged, body, sig "
                                 "FROM records ORDER BY terminal, epoch, seq")
            for row in cur:
                yield export_line(*row)
        finally:
            reader.close()

    def report(self) -> dict[str, Any]:
        with self._lock:
            db = self._db
            terminals: dict[str, Any] = {}
            for (t, contig, batches, n, dups, seen, status, epoch) in db.execute(
                    "SELECT terminal, contiguous_seq, batches, records, duplicates, last_seen, "
                    "status, epoch FROM terminals ORDER BY terminal"):
                beyond, first_beyond, max_seq = db.execute(
                    "SELECT count(*), min(seq), max(seq) FROM records "
                    "WHERE terminal=? AND epoch=? AND seq>?", (t, epoch, contig)).fetchone()
                terminals[t] = terminal_entry(contig, batches, n, dups, seen, status, beyond,
                                              first_beyond, max_seq)
                terminals[t]["epoch"] = epoch
            return report_from(db.execute, terminals)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
