"""Uplink: journal → broker → hub, with outages, hub crashes and bad acks.

The integration tests run the hub as a real second process (``ykt hub run``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.journal import Journal
from simulator.broker import Mosquitto
from sync.hub.service import Hub
from sync.uplink import Uplink, UplinkSettings, parse_ack
from tests.fixtures.hub import HubProcess, Listener, fast_settings, wait_until
from tests.test_hub import fill


def make_uplink(journal: Journal, broker: Mosquitto, **opts: float) -> Uplink:
    options = UplinkSettings.model_validate({"batch_records": 100, "ack_timeout_s": 2.0,
                                             **opts})
    return Uplink(journal, fast_settings(broker), journal.terminal,
                  lambda: {"policy_version": "2026.11.1", "clock": "synced"},
                  options=options)


def assert_exactly_once(records: list[dict[str, Any]], journal: Journal) -> None:
    seqs = [int(r["seq"]) for r in records if r["terminal"] == journal.terminal]
    assert len(seqs) == len(set(seqs)), "duplicate records at the hub"
    assert sorted(seqs) == list(range(1, journal.last_seq + 1)), "records missing at the hub"


def test_parse_ack() -> None:
    assert parse_ack(b'{"v":1,"seq":42}') == 42
    for bad in [b"", b"\xff", b"[]", b'{"v":2,"seq":1}', b'{"v":1,"seq":-1}',
                b'{"v":1,"seq":"7"}', b'{"v":1,"seq":true}', b'{"v":1}']:
        with pytest.raises(ValueError):
            parse_ack(bad)


def test_syncs_and_publishes_status(broker: Mosquitto, hub: Hub, tmp_path: Path,
                                    listener: Listener) -> None:
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 1234)
    up = make_uplink(journal, broker)
    up.start()
    up.start()
    try:
        assert up.wait_synced(20), f"not synced: acked {journal.acked_seq}/{journal.last_seq}"
        fill(journal, 5)
        up.notify()
        assert up.wait_synced(20), "records appended later were not synced"
        listener.subscribe("ykt/v1/t/bus-1/status")
        wait_until(lambda: bool(listener.got("ykt/v1/t/bus-1/status")), 10,
                   "the retained status")
        status = json.loads(listener.got("ykt/v1/t/bus-1/status")[-1])
        assert status["state"] == "online" and status["policy_version"] == "2026.11.1"
        assert {"last_seq", "acked_seq", "outbox", "time"} <= status.keys()
    finally:
        up.stop()
        up.stop()
    assert_exactly_once([json.loads(x) for x in hub.store.export()], journal)
    wait_until(lambda: (hub.store.report()["terminals"]["bus-1"]["status"] or {})
               .get("state") == "offline", 10, "the offline status at the hub")


def test_puback_is_not_an_ack_and_prune_waits_for_the_hub(
        broker: Mosquitto, hub_process: HubProcess, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 300)
    up = make_uplink(journal, broker, retention_s=0, prune_interval_s=0.05)
    up.start()
    try:
        wait_until(lambda: up.stats["batches_sent"] >= 3, 10, "batches sent (no hub yet)")
        assert journal.acked_seq == 0, "a broker PUBACK must not mark records synced"
        assert len(journal.records(0, 10_000)) == 300, "pruned before the hub acked"
        hub_process.start()
        assert up.wait_synced(20), "not synced after the hub started"
        wait_until(lambda: len(journal.records(0, 10_000)) == 1, 10,
                   "acknowledged records to be pruned (newest kept)")
    finally:
        up.stop()
    assert_exactly_once(hub_process.export(), journal)


def test_broker_killed_mid_run_every_record_arrives_once(
        broker: Mosquitto, hub_process: HubProcess, tmp_path: Path) -> None:
    hub_process.start()
    journal = Journal(tmp_path / "j.db", "bus-1")
    up = make_uplink(journal, broker)
    up.start()
    stop = threading.Event()

    def taps(n: int) -> None:
        for _ in range(n):
            fill(journal, 1)
            up.notify()
            if stop.is_set():
                return

    try:
        taps(400)
        wait_until(lambda: journal.acked_seq > 0, 20, "the first ack")
        broker.stop(kill=True)  # in the middle of the run
        taps(400)               # taps go on, journaled offline
        assert journal.acked_seq < journal.last_seq
        broker.start()
        taps(400)
        assert up.wait_synced(30), (
            f"not synced after the outage: acked {journal.acked_seq}/{journal.last_seq}")
    finally:
        stop.set()
        up.stop()
    assert journal.last_seq == 1200
    assert_exactly_once(hub_process.export(), journal)
    rep = hub_process.report()
    assert rep["totals"]["chain_breaks"] == 0 and rep["totals"]["terminals_with_gaps"] == 0


@pytest.mark.expect_log("sync.hub.service", r"fault injection: exiting after commit \d+, before the ack")
def test_hub_crash_between_commit_and_ack(broker: Mosquitto, hub_process: HubProcess,
                                          tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 1000)
    hub_process.start(crash_after_commit=3)
    up = make_uplink(journal, broker, batch_records=50, ack_timeout_s=1.0)
    up.start()
    try:
        assert hub_process.wait_exit(30) == 9, "the hub did not crash after its 3rd commit"
        assert journal.acked_seq < journal.last_seq
        hub_process.start()
        assert up.wait_synced(30), (
            f"not synced after the hub restart: acked {journal.acked_seq}/{journal.last_seq}")
    finally:
        up.stop()
    assert_exactly_once(hub_process.export(), journal)
    rep = hub_process.report()
    assert rep["totals"]["duplicates_rejected"] >= 50, "the unacked batch was not resent"
    assert rep["totals"]["chain_breaks"] == 0


@pytest.mark.expect_log("sync.uplink", r"hub acked seq 999999 beyond last journaled seq")
def test_malformed_acks_are_counted_and_reported(broker: Mosquitto, hub: Hub,
                                                 listener: Listener, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 10)
    up = make_uplink(journal, broker)
    up.start()
    try:
        assert up.wait_synced(20)
        for bad in [b"garbage", b'{"v":1,"seq":"x"}', b"[]", b'{"v":9,"seq":1}']:
            listener.publish("ykt/v1/t/bus-1/ack", bad)
        listener.publish("ykt/v1/t/bus-1/ack", b'{"v":1,"seq":999999}')  # beyond the journal
        wait_until(lambda: up.stats["malformed_acks"] == 4 and up.stats["acks_beyond"] == 1,
                   10, "the bad acks to be counted")
        assert journal.acked_seq == 10
        fill(journal, 10)
        up.notify()
        assert up.wait_synced(20), "uplink stopped working after bad acks"
        assert up.publish_status()
        wait_until(lambda: ((hub.store.report()["terminals"]["bus-1"]["status"] or {})
                            .get("uplink", {}).get("malformed_acks")) == 4, 10,
                   "the malformed-ack count in the hub's report")
    finally:
        up.stop()


def test_a_hub_coming_online_triggers_an_immediate_resend(
        broker: Mosquitto, hub_process: HubProcess, tmp_path: Path) -> None:
    """With an ack timeout of 5 minutes, only the hub's retained "online" status can make
    the terminal resend batches it already sent while no hub was subscribed."""
    journal = Journal(tmp_path / "j.db", "bus-2")
    fill(journal, 300)
    up = make_uplink(journal, broker, ack_timeout_s=300.0)
    up.start()
    try:
        wait_until(lambda: up.stats["records_sent"] >= 300, 20, "the batches to be sent")
        assert journal.acked_seq == 0            # nobody was listening
        hub_process.start()
        assert up.wait_synced(30), "the hub's online status did not trigger a resend"
        assert up.stats["resends"] == 0, "synced by the ack timeout, not by the hub status"
    finally:
        up.stop()
    assert_exactly_once(hub_process.export(), journal)
