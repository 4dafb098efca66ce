"""The hub on PostgreSQL (:class:`sync.hub.pgstore.PgHubStore`): the SQLite store's
contract tests, concurrency of several stores on one database, schema versioning, the
CLI with ``--db postgresql://…``, and two real ``ykt hub run`` processes sharing one
broker subscription and one database.

The server is a throw-away cluster made for the session (``tests/fixtures/postgres.py``),
or ``$YKT_TEST_PG_URL`` when set; a fresh database ``ykt_test_<random>`` is created for
the session and dropped afterwards, and each test gets its own schema in it. Nothing here
is skipped: without PostgreSQL these tests fail, saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.cli import main
from agent.journal import GENESIS, Journal
from simulator.broker import Mosquitto
from sync.hub.pgstore import SCHEMA_VERSION, PgHubStore, PgStoreError
from sync.hub.store import HubStore, IngestResult
from sync.uplink import Uplink, UplinkSettings, encode_batch
from tests import test_hub as sqlite_suite
from tests.fixtures.hub import HubProcess, Listener, fast_settings, wait_until
from tests.test_hub import fill, incoming

# The SQLite store's contract tests, run here against PgHubStore (the local `store`
# fixture below replaces theirs; `journal` is theirs).
journal = sqlite_suite.journal
test_ingest_is_idempotent = sqlite_suite.test_ingest_is_idempotent
test_gap_is_reported_then_closed = sqlite_suite.test_gap_is_reported_then_closed
test_broken_chain_is_stored_flagged_and_reported = (
    sqlite_suite.test_broken_chain_is_stored_flagged_and_reported)
test_conflicting_duplicate_is_a_break = sqlite_suite.test_conflicting_duplicate_is_a_break
test_a_stored_record_is_checked_as_stored_when_its_gap_closes = (
    sqlite_suite.test_a_stored_record_is_checked_as_stored_when_its_gap_closes)


@pytest.fixture
def rewrite_stored_body(pg_dsn: str) -> Callable[[str, int, str], None]:
    """Change a stored record's body text behind the store's back (a damaged database)."""
    def rewrite(terminal: str, seq: int, text: str) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE records SET body=%s WHERE terminal=%s AND seq=%s",
                         (text, terminal, seq))
    return rewrite


@pytest.fixture
def store(pg_dsn: str) -> Iterator[PgHubStore]:
    s = PgHubStore(pg_dsn)
    yield s
    s.close()


def ingest_concurrently(plan: list[tuple[HubStore, list[list[Any]]]], terminal: str,
                        acks: list[list[int]] | None = None) -> list[IngestResult]:
    """Each store (its own connection) ingests its batches in order, all stores at once;
    ``acks[i]`` collects the contiguous seqs store ``i`` returned, in order."""
    results: list[IngestResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(plan))
    lock = threading.Lock()

    def work(i: int, s: HubStore, batches: list[list[Any]]) -> None:
        try:
            start.wait()
            for b in batches:
                r = s.ingest(terminal, b)
                with lock:
                    results.append(r)
                if acks is not None:
                    acks[i].append(r.contiguous_seq)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i, *p)) for i, p in enumerate(plan)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def shuffled(items: list[Any], seed: int) -> list[Any]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def test_concurrent_stores_store_each_record_once_and_verify_the_chain(
        pg_dsn: str, tmp_path: Path) -> None:
    """Four stores (as four hubs) ingest the same backlog at once, each in its own random
    order of small overlapping batches: gaps open and close under contention."""
    j = Journal(tmp_path / "j.db", "bus-7")
    fill(j, 1500)
    recs = incoming(j, 0, 1500)
    batches = [recs[i:i + 40] for i in range(0, 1500, 20)]  # each record in two batches
    stores: list[HubStore] = [PgHubStore(pg_dsn) for _ in range(4)]
    acks: list[list[int]] = [[] for _ in stores]
    try:
        results = ingest_concurrently([(st, shuffled(batches, i))
                                       for i, st in enumerate(stores)], "bus-7", acks)
        rep = stores[0].report()
        lines = [json.loads(x) for x in stores[0].export()]
    finally:
        for s in stores:
            s.close()
    assert sum(r.stored for r in results) == 1500
    assert sum(r.breaks for r in results) == 0
    for seen in acks:  # the committed contiguous seq never goes backwards
        assert seen == sorted(seen) and seen[-1] == 1500
    term = rep["terminals"]["bus-7"]
    assert (term["records"], term["contiguous_seq"], term["gap"]) == (1500, 1500, None)
    assert term["duplicates_rejected"] == 4 * sum(map(len, batches)) - 1500
    assert rep["totals"]["chain_breaks"] == 0 and term["flagged_records"] == 0
    assert [x["seq"] for x in lines] == list(range(1, 1501))


def test_concurrent_conflicting_duplicates_keep_one_and_report(
        pg_dsn: str, tmp_path: Path) -> None:
    """Two stores race different records 2..3 of one terminal: whichever commits first
    is kept, the other is a conflicting duplicate — never two rows, never silent."""
    j = Journal(tmp_path / "j.db", "bus-8")
    fill(j, 3)
    recs = incoming(j)
    forged = sqlite_suite.make_record(dict(recs[1].body, credential_key="e" * 32))
    stores: list[HubStore] = [PgHubStore(pg_dsn) for _ in range(2)]
    try:
        stores[0].ingest("bus-8", recs[:1])
        ingest_concurrently([(stores[0], [recs[1:]]), (stores[1], [[forged]])], "bus-8")
        rep = stores[1].report()
    finally:
        for s in stores:
            s.close()
    assert rep["totals"]["records"] == 3
    first = rep["chain_breaks"][0]
    assert first["seq"] == 2 and "conflicting duplicate" in first["problem"]
    assert {b["seq"] for b in rep["chain_breaks"]} <= {2, 3}


def test_schema_is_versioned_and_migrated_once_by_concurrent_hubs(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    opened: list[PgHubStore] = []

    def open_one() -> None:
        try:
            opened.append(PgHubStore(pg_dsn))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in opened:
        s.close()
    assert not errors and len(opened) == 4
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM hub_schema").fetchall() == [(SCHEMA_VERSION,)]
        conn.execute("UPDATE hub_schema SET version = 99")
    with pytest.raises(PgStoreError, match="version 99 is newer"):
        PgHubStore(pg_dsn)


def test_store_reconnects_after_losing_its_connection(store: PgHubStore, journal: Journal,
                                                      pg_database: str) -> None:
    recs = incoming(journal)
    store.ingest("bus-1", recs[:6])
    assert store._db is not None
    pid = store._db.info.backend_pid
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    res = store.ingest("bus-1", recs)  # first attempt fails, the retry reconnects
    assert (res.contiguous_seq, res.stored, res.duplicates) == (12, 6, 6)
    assert store.report()["totals"]["chain_breaks"] == 0


def test_status_and_rejects_keep_odd_text(store: PgHubStore) -> None:
    store.record_status("bus-1", {"state": "online", "note": "nul\x00 and 中文"})
    store.record_reject("bus-1", "malformed_payload", "bad\x00byte")
    rep = store.report()
    assert rep["terminals"]["bus-1"]["status"]["note"] == "nul\x00 and 中文"
    assert rep["totals"]["rejected"] == {"malformed_payload": 1}


def test_unreachable_database_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://postgres:secret@127.0.0.1:1/nowhere"
    with pytest.raises(PgStoreError, match="cannot connect") as info:
        PgHubStore(url, connect_timeout=2)
    assert "secret" not in str(info.value)
    assert main(["hub", "report", "--db", url]) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "dbname=nowhere" in err and "secret" not in err


def test_cli_report_and_export_with_a_postgresql_url(
        pg_dsn: str, journal: Journal, capsys: pytest.CaptureFixture[str]) -> None:
    s = PgHubStore(pg_dsn)
    s.ingest("bus-1", incoming(journal))
    s.record_reject("bus-7", "unknown_terminal", "terminal not in the configured list")
    s.close()
    capsys.readouterr()
    assert main(["hub", "export", "--db", pg_dsn, "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["seq"] == 1
    assert main(["hub", "report", "--db", pg_dsn]) == 0
    text = capsys.readouterr().out
    assert "records: 12" in text and "unknown_terminal" in text and "elderly_free" in text
    assert main(["hub", "report", "--db", pg_dsn, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["rejected"] == {"unknown_terminal": 1}


def _ingests(hub: HubProcess) -> int:
    """Batches this hub committed (its debug log lines), over all its runs."""
    return sum((hub.workdir / f"hub-{i}.log").read_text().count("acking")
               for i in range(1, hub.runs + 1))


@pytest.mark.expect_log("sync.hub.service", r"fault injection: exiting after commit \d+, before the ack")
def test_two_hub_processes_share_the_subscription_and_the_database(
        broker: Mosquitto, listener: Listener, pg_dsn: str, tmp_path: Path) -> None:
    """A backlog of 4,000 records through two ``ykt hub run`` processes on one broker and
    one database, with resends from a replaying client and a hub crashing between commit
    and ack: every record stored once, the chain verified, no false breaks."""
    n = 4000
    j = Journal(tmp_path / "journal.db", "bus-9")
    fill(j, n)
    hubs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        hubs.append(HubProcess(pg_dsn, broker, tmp_path / name, verbose=2))
    hub_a, hub_b = hubs
    up = Uplink(j, fast_settings(broker), "bus-9",
                options=UplinkSettings(batch_records=250, window_batches=8, ack_timeout_s=1.0))
    try:
        hub_a.start(crash_after_commit=6)
        hub_b.start()
        # resends: overlapping batches of the whole backlog, out of order, both hubs at once
        rows = j.raw_records(0, n)
        starts = list(range(0, n, 200))
        random.Random(7).shuffle(starts)
        for i in starts:
            listener.publish("ykt/v1/t/bus-9/tx", encode_batch("bus-9", rows[i:i + 400]))
        up.start()
        assert hub_a.wait_exit(30) == 9  # crashed after a commit, before its ack
        hub_a.start()
        assert up.wait_synced(30), f"acked {j.acked_seq} of {n}"
        # both hubs took part, each after the other's batches of the same terminal
        wait_until(lambda: _ingests(hub_a) > 0 and _ingests(hub_b) > 0, 10,
                   "both hubs to log their commits")
    finally:
        up.stop()
        for h in hubs:
            h.stop()
    exported = hub_b.export()
    rep = hub_b.report()
    assert [x["seq"] for x in exported] == list(range(1, n + 1))  # each exactly once
    prev = GENESIS
    for x in exported:
        text = json.dumps(x["body"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert x["hash"] == hashlib.sha256(text.encode()).hexdigest()
        assert x["body"]["prev"] == prev and not x["flagged"]
        prev = x["hash"]
    term = rep["terminals"]["bus-9"]
    assert (term["records"], term["contiguous_seq"], term["gap"]) == (n, n, None)
    assert rep["totals"]["chain_breaks"] == 0 and rep["chain_breaks"] == []
    assert term["duplicates_rejected"] > 0  # the resends reached the hubs
