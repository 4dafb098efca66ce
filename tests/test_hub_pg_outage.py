"""PostgreSQL going away under the hub (``docs/hub.md``, *Correct under concurrency* and
*Failure*): the store retries a failed transaction, reconnecting; a ``ykt hub run``
process whose database is down sends no ack, keeps running, and stores the terminal's
resends once the database is back.

These tests stop and start a server, so they use a cluster of their own (one for the
module), never the session's nor ``$YKT_TEST_PG_URL``'s.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal import Journal
from simulator.broker import Mosquitto
from simulator.postgres import PgCluster, with_search_path
from sync.hub.pgstore import PgHubStore
from sync.uplink import Uplink, UplinkSettings
from tests.fixtures.hub import HubProcess, fast_settings, wait_until
from tests.fixtures.postgres import PG_URL_ENV
from tests.test_hub import fill, incoming


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own, whose server the tests stop and start."""
    if os.environ.get(PG_URL_ENV):
        pytest.skip(f"${PG_URL_ENV} is set: these tests stop a server of their own")
    c = PgCluster()
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def dsn(cluster: PgCluster) -> Iterator[str]:
    """An empty schema of its own on ``cluster``, whose server is up."""
    import psycopg

    schema = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield with_search_path(cluster.url, schema)
    cluster.start_server()  # for the next test, if this one left it down


def test_a_transaction_is_tried_three_times_reconnecting(
        cluster: PgCluster, dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """"A transaction that fails on a lost connection … is retried up to 3 times
    (reconnecting)": with the server gone, three attempts, then the error."""
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 4)
    recs = incoming(journal)
    store = PgHubStore(dsn, connect_timeout=2)
    try:
        assert store.ingest("bus-1", recs[:2]).contiguous_seq == 2
        cluster.stop_server()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sync.hub.pgstore"), \
                pytest.raises(Exception, match="cannot connect|connection"):
            store.ingest("bus-1", recs[2:])
        retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert len(retries) == 2, retries
        assert "attempt 1 of 3" in retries[0] and "attempt 2 of 3" in retries[1]

        cluster.start_server()
        assert store.ingest("bus-1", recs[2:]).contiguous_seq == 4  # reconnects
    finally:
        store.close()
        journal.close()


@pytest.mark.expect_log("sync.link", r"message ykt/v1/t/bus-1/tx callback failed")
def test_a_hub_process_loses_nothing_while_its_database_is_down(
        cluster: PgCluster, dsn: str, broker: Mosquitto, tmp_path: Path) -> None:
    """``docs/hub.md``: if PostgreSQL is down, ingest fails after the retries, no ack is
    sent and the records wait in the terminal's journal; the hub process keeps running
    and, once the database is back, the resends are stored and acked — each record once."""
    journal = Journal(tmp_path / "j.db", "bus-1")
    hub = HubProcess(dsn, broker, tmp_path)
    up = Uplink(journal, fast_settings(broker), "bus-1",
                options=UplinkSettings(batch_records=10, ack_timeout_s=1.0))
    try:
        hub.start()
        fill(journal, 10)
        up.start()
        assert up.wait_synced(20)

        cluster.stop_server()
        fill(journal, 10)
        up.notify()
        # the terminal resends only while unacked, so a second failed ingest of its tx
        # shows that the first one sent no ack
        failed = "message ykt/v1/t/bus-1/tx callback failed"
        wait_until(lambda: hub.log_text().count(failed) >= 2, 30,
                   "two failed ingests while the database is down")
        assert journal.acked_seq == 10 and journal.pending_count == 10
        assert hub.proc is not None and hub.proc.poll() is None, "the hub process died"

        cluster.start_server()
        assert up.wait_synced(30), f"acked {journal.acked_seq} of 20 after the outage"
        exported = hub.export()
    finally:
        up.stop()
        hub.stop()
        journal.close()
    assert [x["seq"] for x in exported] == list(range(1, 21))
