"""The hub's store in PostgreSQL, shared by several hub processes (``PgHubStore``).

Several ``ykt hub run`` processes share the MQTT subscription ``$share/ykt-hub/…/tx`` and
one database, so two hubs may receive batches of the same terminal at the same time (a
resend after an ack timeout lands on the other hub while the first is still committing).
What keeps that correct:

* **one transaction per batch**, READ COMMITTED, that first takes the terminal's row lock
  (``SELECT … FOR UPDATE`` on ``terminals``): batches of one terminal are serialized
  across all hubs, batches of different terminals run in parallel;
* under that lock the contiguous seq, its hash and the chain walk always start from the
  latest committed state, so no false chain breaks and no lost advance;
* records go in with one ``INSERT … SELECT FROM unnest(arrays) ON CONFLICT (terminal,
  seq) DO NOTHING RETURNING seq`` (one round trip per batch; arrays sent in binary, as the
  text form's escaping of JSON bodies costs 4× the time), idempotent on (terminal, seq)
  even without the lock;
* a transaction that fails on a lost connection, a deadlock or a serialization failure is
  retried (reconnecting if needed): ingest is idempotent, so a retry after a commit whose
  answer was lost only counts duplicates.

The schema is versioned (table ``hub_schema``) and migrated on start under a
transaction-scoped advisory lock, so hubs starting together do not race. Tables live in
the first schema of the connection's ``search_path`` (``?options=-csearch_path%3Dname``
in the URL picks another). Passwords belong in ``$PGPASSWORD`` / ``~/.pgpass``
(``$PGPASSFILE``), not in the URL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent.errors import YktError
from agent.journal import GENESIS
from sync.hub.chain import IncomingRecord, advance_chain, apply_skip, split_duplicates
from sync.hub.report_rollup import PG_DDL, add_pg, ensure_pg
from sync.hub.store import (
    HubStore,
    IngestResult,
    decision_fields,
    export_line,
    new_store_id,
    report_from,
    terminal_entry,
)

__all__ = ["SCHEMA_VERSION", "PgHubStore", "PgStoreError", "redact_dsn"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 3
"""The schema this code writes; a database at a newer version is refused."""

_MIGRATION_LOCK = 0x796B7468  # "ykth": pg_advisory_xact_lock key for schema migrations
_RETRIES = 3

# Each entry brings the schema from version-1 to version. "terminal" columns use the "C"
# collation so ORDER BY terminal matches SQLite's and can use the primary key index.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE records (
    terminal text COLLATE "C" NOT NULL, seq bigint NOT NULL, hash text NOT NULL,
    body text NOT NULL, product text COLLATE "C" NOT NULL, reason text COLLATE "C" NOT NULL,
    flagged boolean NOT NULL DEFAULT false, received timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal, seq)
);
CREATE TABLE terminals (
    terminal text COLLATE "C" PRIMARY KEY, contiguous_seq bigint NOT NULL DEFAULT 0,
    contiguous_hash text NOT NULL, batches bigint NOT NULL DEFAULT 0,
    records bigint NOT NULL DEFAULT 0, duplicates bigint NOT NULL DEFAULT 0,
    last_seen timestamptz, status text, status_at timestamptz
);
CREATE TABLE chain_breaks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, terminal text COLLATE "C" NOT NULL,
    seq bigint NOT NULL, problem text NOT NULL, detected timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chain_breaks_terminal ON chain_breaks (terminal);
CREATE TABLE rejects (
    terminal text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
    count bigint NOT NULL, last_detail text NOT NULL, last_at timestamptz NOT NULL,
    PRIMARY KEY (terminal, kind)
);
"""),
    # 2: terminal incarnations (records keyed by terminal, epoch, seq; one chain per
    # epoch; existing records are the legacy epoch ''), head signatures, the store id
    (2, """
ALTER TABLE records ADD COLUMN epoch text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE records ADD COLUMN sig text;
ALTER TABLE records DROP CONSTRAINT records_pkey;
ALTER TABLE records ADD PRIMARY KEY (terminal, epoch, seq);
ALTER TABLE terminals ADD COLUMN epoch text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE chain_breaks ADD COLUMN epoch text COLLATE "C" NOT NULL DEFAULT '';
CREATE TABLE chains (
    terminal text COLLATE "C" NOT NULL, epoch text COLLATE "C" NOT NULL,
    contiguous_seq bigint NOT NULL DEFAULT 0, contiguous_hash text NOT NULL,
    records bigint NOT NULL DEFAULT 0, first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (terminal, epoch)
);
INSERT INTO chains SELECT terminal, '', contiguous_seq, contiguous_hash, records,
    coalesce(last_seen, now()), coalesce(last_seen, now()) FROM terminals WHERE batches > 0;
CREATE TABLE hub_meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO hub_meta VALUES ('store_id', md5(random()::text || clock_timestamp()::text));
"""),
    (3, PG_DDL),  # the reports' hourly rollup (sync/hub/report_rollup.py)
)
assert [v for v, _ in _MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


class PgStoreError(YktError, OSError):
    """The PostgreSQL store cannot be used: unreachable, or a schema newer than this code.
    The message names the (password-free) database and what to do."""


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, for logs and messages (``host=… dbname=…``)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable PostgreSQL DSN>"
    params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if k != "options"})


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters."""
    return text.replace("\x00", "\\0")


class PgHubStore(HubStore):
    """:class:`~sync.hub.store.HubStore` in PostgreSQL; safe for many hub processes on one
    database and for threads within one (a lock serializes this instance's connection).

    ``dsn`` is a libpq URL or ``key=value`` string. Raises :class:`PgStoreError` if the
    database cannot be reached (within ``connect_timeout`` s, default 10) or holds a newer
    schema; other methods raise ``psycopg.Error`` when the database fails beyond
    :data:`_RETRIES` attempts.
    """

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        params = conninfo_to_dict(dsn)
        params.setdefault("application_name", "ykt-hub")
        params.setdefault("connect_timeout", str(connect_timeout))
        self._conninfo = make_conninfo("", **params)
        self.where = redact_dsn(dsn)
        self._lock = threading.Lock()
        self._closed = False
        self._db: psycopg.Connection[Any] | None = None
        with self._lock:
            conn = self._connection()
            try:
                self.schema_version = self._migrate(conn)
                row = conn.execute("SELECT value FROM hub_meta WHERE key='store_id'").fetchone()
                assert row is not None
                self.store_id = str(row[0])
            except BaseException:
                self._closed, self._db = True, None
                conn.close()
                raise

    # -- connection ------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.OperationalError as err:
            raise PgStoreError(f"PostgreSQL {self.where}: cannot connect: "
                               f"{str(err).strip()} (is the server running, the database "
                               "created, the user allowed?)") from err

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise PgStoreError(f"PostgreSQL {self.where}: store is closed")
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                log.warning("PostgreSQL %s: connection lost, reconnecting", self.where)
                self._db.close()
            self._db = self._connect()
        return self._db

    def _transact(self, what: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` in one transaction; retry on a lost connection, deadlock or
        serialization failure (every caller is idempotent). Caller holds ``_lock``."""
        for attempt in range(1, _RETRIES + 1):
            try:
                conn = self._connection()  # a failed reconnect is a failed attempt too
                with conn.transaction():
                    return work(conn)
            except (psycopg.OperationalError, PgStoreError) as err:
                if attempt == _RETRIES or self._closed:
                    raise
                log.warning("PostgreSQL %s: %s failed (attempt %d of %d), retrying: %s",
                            self.where, what, attempt, _RETRIES, str(err).strip())
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def _migrate(self, conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS hub_schema (version integer NOT NULL)")
            row = conn.execute("SELECT version FROM hub_schema").fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise PgStoreError(
                    f"PostgreSQL {self.where}: hub schema version {current} is newer than "
                    f"this program's {SCHEMA_VERSION}; upgrade yikatong-edge")
            for version, ddl in _MIGRATIONS:
                if version > current:
                    log.info("PostgreSQL %s: migrating hub schema to version %d",
                             self.where, version)
                    conn.execute(ddl)
            if row is None:
                conn.execute("INSERT INTO hub_schema VALUES (%s)", (SCHEMA_VERSION,))
            elif current < SCHEMA_VERSION:
                conn.execute("UPDATE hub_schema SET version=%s", (SCHEMA_VERSION,))
            ensure_pg(conn, self.where)
        return SCHEMA_VERSION

    def reincarnate(self) -> str:
        new = new_store_id()
        with self._lock:
            self._transact("reincarnate", lambda c: c.execute(
                "UPDATE hub_meta SET value=%s WHERE key='store_id'", (new,)))
        self.store_id = new
        return new

    # -- ingest ----------------------------------------------------------------------------
    def ingest(self, terminal: str, records: Sequence[IncomingRecord], epoch: str = "",
               head_sig: str | None = None, skip: tuple[int, int] | None = None
               ) -> IngestResult:
        with self._lock:
            return self._transact("ingest", lambda c: self._ingest(
                c, terminal, epoch, records, head_sig, skip))

    def _lock_terminal(self, conn: psycopg.Connection[Any], terminal: str) -> tuple[int, str]:
        """The terminal's (contiguous seq, its hash), row-locked until the transaction ends."""
        lock = "SELECT contiguous_seq, contiguous_hash FROM terminals WHERE terminal=%s " \
               "FOR UPDATE"
        row = conn.execute(lock, (terminal,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO terminals (terminal, contiguous_hash) VALUES (%s, %s) "
                         "ON CONFLICT (terminal) DO NOTHING", (terminal, GENESIS))
            row = conn.execute(lock, (terminal,)).fetchone()
            assert row is not None
        return int(row[0]), str(row[1])

    def _chain(self, conn: psycopg.Connection[Any], terminal: str, epoch: str
               ) -> tuple[int, str]:
        """``(terminal, epoch)``'s contiguous seq and hash (caller holds the row lock)."""
        row = conn.execute("SELECT contiguous_seq, contiguous_hash FROM chains WHERE "
                           "terminal=%s AND epoch=%s", (terminal, epoch)).fetchone()
        if row is None:
            conn.execute("INSERT INTO chains (terminal, epoch, contiguous_hash) VALUES "
                         "(%s, %s, %s)", (terminal, epoch, GENESIS))
            return 0, GENESIS
        return int(row[0]), str(row[1])

    def _ingest(self, conn: psycopg.Connection[Any], terminal: str, epoch: str,
                records: Sequence[IncomingRecord], head_sig: str | None,
                skip: tuple[int, int] | None) -> IngestResult:
        self._lock_terminal(conn, terminal)
        contig, chash = self._chain(conn, terminal, epoch)
        contig, chash, skipped = apply_skip(contig, chash, skip, records)
        existing: dict[int, str] = {}
        if records:  # by the batch's own seqs: bounded work whatever the seqs are
            existing = {int(s): str(h) for s, h in conn.execute(
                "SELECT seq, hash FROM records WHERE terminal=%s AND epoch=%s AND "
                "seq = ANY(%s::bigint[])", (terminal, epoch, sorted({r.seq for r in records})))}
        new, duplicates, breaks = split_duplicates(records, existing)
        breaks = skipped + breaks
        head = records[-1].seq if records else None
        if new:
            cols: tuple[list[Any], ...] = ([], [], [], [], [], [])
            for r in new.values():
                product, reason = decision_fields(r.body)
                for col, value in zip(cols, (r.seq, r.hash, r.canonical, product, reason,
                                             head_sig if r.seq == head else None),
                                      strict=True):
                    col.append(value)
            inserted = {int(s) for (s,) in conn.execute(
                "INSERT INTO records (terminal, epoch, seq, hash, body, product, reason, sig) "
                "SELECT %s::text, %s::text, * FROM unnest(%b::bigint[], %b::text[], "
                "%b::text[], %b::text[], %b::text[], %b::text[]) "
                "ON CONFLICT (terminal, epoch, seq) DO NOTHING RETURNING seq",
                (terminal, epoch, *cols))}
            if len(inserted) != len(new):  # only if something wrote without the row lock
                lost = [s for s in new if s not in inserted]
                log.warning("terminal %s: %d records appeared concurrently; counted as "
                            "duplicates", terminal, len(lost))
                for s, h in conn.execute("SELECT seq, hash FROM records WHERE terminal=%s "
                                         "AND epoch=%s AND seq = ANY(%s::bigint[])",
                                         (terminal, epoch, lost)):
                    if h != new[int(s)].hash:
                        breaks.append((int(s), "conflicting duplicate: a different record "
                                               "with this seq was already stored (the first "
                                               "is kept)"))
                for s in lost:
                    del new[s]
                duplicates += len(lost)
            add_pg(conn, terminal, new.values())
        walk = advance_chain(contig, chash, new, lambda lo, hi: conn.execute(
            "SELECT seq, hash, body FROM records WHERE terminal=%s AND epoch=%s AND seq "
            "BETWEEN %s AND %s", (terminal, epoch, lo, hi)))
        contig, chash, flagged = walk.contiguous_seq, walk.contiguous_hash, walk.flagged
        breaks += walk.breaks
        beyond = sum(1 for s in new if s > contig)
        if breaks:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO chain_breaks (terminal, epoch, seq, problem) "
                                "VALUES (%s, %s, %s, %s)",
                                [(terminal, epoch, s, p) for s, p in breaks])
            for s, p in breaks:
                log.warning("chain break: terminal %s seq %d: %s", terminal, s, p)
        if flagged:
            conn.execute("UPDATE records SET flagged=true WHERE terminal=%s AND epoch=%s "
                         "AND seq = ANY(%s::bigint[])", (terminal, epoch, flagged))
        if beyond:
            log.warning("terminal %s: %d records stored beyond a gap after seq %d",
                        terminal, beyond, contig)
        conn.execute("UPDATE chains SET contiguous_seq=%s, contiguous_hash=%s, "
                     "records=records+%s, last_seen=now() WHERE terminal=%s AND epoch=%s",
                     (contig, chash, len(new), terminal, epoch))
        conn.execute("UPDATE terminals SET contiguous_seq=%s, contiguous_hash=%s, epoch=%s, "
                     "batches=batches+1, records=records+%s, duplicates=duplicates+%s, "
                     "last_seen=now() WHERE terminal=%s",
                     (contig, chash, epoch, len(new), duplicates, terminal))
        return IngestResult(contig, len(new), duplicates, len(breaks), beyond, chash)

    def contiguous_seq(self, terminal: str, epoch: str = "") -> int:
        with self._lock:
            row = self._transact("contiguous_seq", lambda c: c.execute(
                "SELECT contiguous_seq FROM chains WHERE terminal=%s AND epoch=%s",
                (terminal, epoch)).fetchone())
        return 0 if row is None else int(row[0])

    def record_reject(self, terminal: str, kind: str, detail: str) -> None:
        with self._lock:
            self._transact("record_reject", lambda c: c.execute(
                "INSERT INTO rejects VALUES (%s, %s, 1, %s, now()) "
                "ON CONFLICT (terminal, kind) DO UPDATE SET count=rejects.count+1, "
                "last_detail=excluded.last_detail, last_at=excluded.last_at",
                (terminal, kind, _clean(detail[:500]))))

    def record_status(self, terminal: str, status: dict[str, Any]) -> None:
        text = json.dumps(status, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._transact("record_status", lambda c: c.execute(
                "INSERT INTO terminals (terminal, contiguous_hash, last_seen, status, "
                "status_at) VALUES (%s, %s, now(), %s, now()) ON CONFLICT (terminal) DO "
                "UPDATE SET last_seen=excluded.last_seen, status=excluded.status, "
                "status_at=excluded.status_at", (terminal, GENESIS, _clean(text))))

    # -- outputs ---------------------------------------------------------------------------
    def export(self) -> Iterator[str]:
        """Streams from its own connection with a server-side cursor (one snapshot)."""
        with psycopg.connect(self._conninfo) as conn, conn.cursor(name="ykt_hub_export") as cur:
            cur.itersize = 5000
            cur.execute("SELECT terminal, epoch, seq, hash, flagged, body, sig FROM records "
                        "ORDER BY terminal, epoch, seq")
            for row in cur:
                yield export_line(*row)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return self._transact("report", self._report)

    def _report(self, db: psycopg.Connection[Any]) -> dict[str, Any]:
        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        terminals: dict[str, Any] = {}
        for (t, contig, batches, n, dups, seen, status, beyond, first_beyond,
             max_seq, epoch) in db.execute(
                "SELECT t.terminal, t.contiguous_seq, t.batches, t.records, t.duplicates, "
                "extract(epoch FROM t.last_seen)::float8, t.status, count(r.seq), "
                "min(r.seq), max(r.seq), t.epoch FROM terminals t LEFT JOIN records r "
                "ON r.terminal = t.terminal AND r.epoch = t.epoch AND "
                "r.seq > t.contiguous_seq GROUP BY t.terminal ORDER BY t.terminal"):
            terminals[t] = terminal_entry(contig, batches, n, dups, seen, status, beyond,
                                          first_beyond, max_seq)
            terminals[t]["epoch"] = epoch
        return report_from(db.execute, terminals)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._db = self._db, None
            if conn is not None:
                conn.close()
