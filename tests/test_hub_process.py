"""The hub's documented behaviour (``docs/protocol.md`` §4–§6, ``docs/hub.md``) shown on
``ykt hub run`` as a process, over a real broker, with the hub's acks read from the
terminals' ack topics: rejects (a bad topic, an over-size batch, a terminal not in
``--terminals``), conflicting duplicates, a gap that closes, two processes in one
``--share-group``; and the status heartbeat as the hub stores it (§7).

"No ack was sent" is proven by a later message's ack: the hub handles one tx message at
a time and acks it before the next, so once a later batch is acked, an ack for the
rejected one would already be there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.journal import GENESIS, Journal, canonical, parse_utc, record_hash, utc_stamp
from simulator.broker import Mosquitto
from sync.hub.service import MAX_BATCH_RECORDS, default_instance
from sync.uplink import Uplink, UplinkSettings, encode_batch
from tests.fixtures.hub import HubProcess, Listener, fast_settings, wait_until
from tests.test_hub import fill

T0 = 1_795_000_000.0  # 2026-11-19, the records' wall time

Rows = list[tuple[int, str, str]]


def chain(terminal: str, n: int) -> Rows:
    """``n`` chained records ``(seq, canonical body, hash)`` as a journal writes them."""
    rows: Rows = []
    prev = GENESIS
    for seq in range(1, n + 1):
        body = {"v": 1, "terminal": terminal, "seq": seq, "prev": prev, "clock": "synced",
                "time": utc_stamp(T0 + seq),
                "decision": {"product": "standard", "reason": "accepted", "amount_cents": 200}}
        prev = record_hash(body)
        rows.append((seq, canonical(body).decode(), prev))
    return rows


def tx(terminal: str) -> str:
    return f"ykt/v1/t/{terminal}/tx"


def acks(listener: Listener, terminal: str) -> list[int]:
    """The seqs the hub acked to ``terminal`` so far, in arrival order."""
    return [json.loads(a)["seq"] for a in listener.got(f"ykt/v1/t/{terminal}/ack")]


def wait_acks(listener: Listener, terminal: str, count: int, timeout: float = 20) -> list[int]:
    wait_until(lambda: len(acks(listener, terminal)) >= count, timeout,
               f"ack #{count} to {terminal}")
    return acks(listener, terminal)


def all_acks(listener: Listener) -> dict[str, list[bytes]]:
    return listener.received("/ack")


@pytest.fixture
def ack_listener(listener: Listener) -> Listener:
    """The raw client, subscribed to every terminal's ack topic."""
    listener.subscribe("ykt/v1/t/+/ack")
    return listener


@pytest.fixture
def running_hub(hub_process: HubProcess) -> HubProcess:
    hub_process.start()
    return hub_process


def test_bad_topics_are_rejected_and_never_acked(running_hub: HubProcess,
                                                 ack_listener: Listener) -> None:
    """A tx on a topic whose terminal id is invalid (§3) is a ``bad_topic`` reject."""
    bad = ["-starts-with-a-dash", "has space", "x" * 65]
    for terminal in bad:
        ack_listener.publish(tx(terminal), encode_batch(terminal, chain(terminal, 2)))
    wait_until(lambda: running_hub.report()["totals"]["rejected"].get("bad_topic") == 3, 20,
               "three bad_topic rejects in the hub report")
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", chain("bus-1", 2)))
    assert wait_acks(ack_listener, "bus-1", 1) == [2]
    assert all_acks(ack_listener) == {"ykt/v1/t/bus-1/ack": [b'{"v":1,"seq":2}']}
    rep = running_hub.report()
    assert rep["totals"]["records"] == 2 and list(rep["terminals"]) == ["bus-1"]
    assert [(r["kind"], r["terminal"], r["count"]) for r in rep["rejects"]] == [
        ("bad_topic", "", 3)]


def test_a_batch_over_the_record_limit_is_rejected_whole_and_the_limit_is_acked(
        running_hub: HubProcess, ack_listener: Listener) -> None:
    """More than 10 000 records in one tx message is ``malformed_payload`` (nothing of it
    stored, no ack); exactly 10 000 is stored and acked."""
    rows = chain("bus-1", MAX_BATCH_RECORDS + 1)
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows))
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows[:MAX_BATCH_RECORDS]))
    assert wait_acks(ack_listener, "bus-1", 1, timeout=60) == [MAX_BATCH_RECORDS]
    rep = running_hub.report()
    assert rep["totals"]["rejected"] == {"malformed_payload": 1}
    assert f"more than {MAX_BATCH_RECORDS} records" in rep["rejects"][0]["last_detail"]
    term = rep["terminals"]["bus-1"]
    assert (term["records"], term["contiguous_seq"], term["duplicates_rejected"]) == (
        MAX_BATCH_RECORDS, MAX_BATCH_RECORDS, 0)
    assert all_acks(ack_listener).keys() == {"ykt/v1/t/bus-1/ack"}
    assert acks(ack_listener, "bus-1") == [MAX_BATCH_RECORDS]


def test_a_conflicting_duplicate_keeps_the_first_records_a_break_and_is_acked(
        running_hub: HubProcess, ack_listener: Listener) -> None:
    """§6: a resent record whose hash differs from the stored one is a conflicting
    duplicate — the first copy is kept, a chain break is recorded — and the hub acks
    every message it accepts, duplicates included, with its contiguous seq."""
    rows = chain("bus-1", 5)
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows))
    assert wait_acks(ack_listener, "bus-1", 1) == [5]
    body = json.loads(rows[2][1])
    forged = dict(body, decision={"product": "elderly_free", "reason": "accepted",
                                  "amount_cents": 0})
    ack_listener.publish(tx("bus-1"), encode_batch(
        "bus-1", [(3, canonical(forged).decode(), record_hash(forged))]))
    assert wait_acks(ack_listener, "bus-1", 2) == [5, 5]
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows))  # a plain resend
    assert wait_acks(ack_listener, "bus-1", 3) == [5, 5, 5]

    rep = running_hub.report()
    term = rep["terminals"]["bus-1"]
    assert (term["records"], term["contiguous_seq"], term["duplicates_rejected"]) == (5, 5, 6)
    assert [(b["seq"], b["problem"][:21]) for b in rep["chain_breaks"]] == [
        (3, "conflicting duplicate")]
    stored = {x["seq"]: x for x in running_hub.export()}
    assert stored[3]["hash"] == rows[2][2] and stored[3]["body"] == body  # the first kept
    assert not any(x["flagged"] for x in stored.values())


def test_a_gap_holds_the_ack_until_it_closes(running_hub: HubProcess,
                                            ack_listener: Listener) -> None:
    """§5/§6: the ack stays at the end of the contiguous run; records after a gap are
    stored, and verified once the gap is filled, when the ack jumps over them."""
    rows = chain("bus-1", 9)
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows[:3]))
    assert wait_acks(ack_listener, "bus-1", 1) == [3]
    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows[6:]))
    assert wait_acks(ack_listener, "bus-1", 2) == [3, 3]
    term = running_hub.report()["terminals"]["bus-1"]
    assert term["records"] == 6
    assert term["gap"] == {"missing_from": 4, "missing_to": 6, "records_beyond": 3}

    ack_listener.publish(tx("bus-1"), encode_batch("bus-1", rows[3:6]))
    assert wait_acks(ack_listener, "bus-1", 3) == [3, 3, 9]
    rep = running_hub.report()
    term = rep["terminals"]["bus-1"]
    assert (term["records"], term["contiguous_seq"], term["gap"]) == (9, 9, None)
    assert rep["totals"]["chain_breaks"] == 0 and term["flagged_records"] == 0
    assert [(x["seq"], x["hash"]) for x in running_hub.export()] == [
        (seq, digest) for seq, _body, digest in rows]


def test_only_the_terminals_listed_are_stored_and_acked(
        broker: Mosquitto, ack_listener: Listener, tmp_path: Path) -> None:
    """``--terminals``: a batch (or status) from a terminal not in the list is an
    ``unknown_terminal`` reject, and no ack is sent (§4)."""
    hub = HubProcess(tmp_path / "hub.db", broker, tmp_path, terminals="bus-1, bus-2")
    hub.start()
    try:
        ack_listener.publish(tx("bus-3"), encode_batch("bus-3", chain("bus-3", 4)))
        ack_listener.publish("ykt/v1/t/bus-3/status", b'{"v":1,"state":"online"}')
        ack_listener.publish(tx("bus-2"), encode_batch("bus-2", chain("bus-2", 4)))
        ack_listener.publish(tx("bus-1"), encode_batch("bus-1", chain("bus-1", 2)))
        assert wait_acks(ack_listener, "bus-1", 1) == [2]
        assert wait_acks(ack_listener, "bus-2", 1) == [4]
        assert all_acks(ack_listener).keys() == {"ykt/v1/t/bus-1/ack", "ykt/v1/t/bus-2/ack"}
        rep = hub.report()
    finally:
        hub.stop()
    assert rep["totals"]["rejected"] == {"unknown_terminal": 2}
    assert sorted(rep["terminals"]) == ["bus-1", "bus-2"]
    assert {r["terminal"] for r in rep["rejects"]} == {"bus-3"}


def _commits(hub: HubProcess) -> int:
    """Tx messages this hub committed (its ``-vv`` log lines), over all its runs."""
    return sum((hub.workdir / f"hub-{i}.log").read_text().count("acking")
               for i in range(1, hub.runs + 1))


def test_two_hub_processes_in_one_share_group_split_the_load(
        broker: Mosquitto, listener: Listener, pg_dsn: str, tmp_path: Path) -> None:
    """Two ``ykt hub run --share-group fleet-a`` on one PostgreSQL database each ingest a
    part and together every record exactly once; a third hub in the default group, on a
    SQLite file of its own, gets every message (so ``--share-group`` is really used).
    Each hub announces itself on its own retained status topic (``docs/hub.md``)."""
    terminals, per = ["bus-1", "bus-2", "bus-3"], 300
    dirs = [tmp_path / d for d in ("a", "b", "observer")]
    for d in dirs:
        d.mkdir()
    hub_a, hub_b = (HubProcess(pg_dsn, broker, d, share_group="fleet-a", verbose=2)
                    for d in dirs[:2])
    observer = HubProcess(tmp_path / "observer.db", broker, dirs[2], verbose=2)
    uplinks: list[Uplink] = []
    try:
        for h in (hub_a, hub_b, observer):
            h.start()
        listener.subscribe("ykt/v1/hub/+/status")
        host = default_instance().rsplit("-", 1)[0]
        pids = [h.proc.pid for h in (hub_a, hub_b, observer) if h.proc is not None]
        topics = {f"ykt/v1/hub/{host}-{pid}/status" for pid in pids}
        wait_until(lambda: all(listener.got(t) for t in topics), 10, "each hub's status")
        for topic in topics:
            status = json.loads(listener.got(topic)[-1])
            assert status["state"] == "online" and topic == f"ykt/v1/hub/{status['instance']}/status"
        for t in terminals:
            j = Journal(tmp_path / f"{t}.db", t)
            fill(j, per)
            uplinks.append(Uplink(j, fast_settings(broker), t, options=UplinkSettings(
                batch_records=25, window_batches=4, ack_timeout_s=5.0)))
        for up in uplinks:
            up.start()
        for up in uplinks:
            assert up.wait_synced(60), f"{up.terminal}: acked {up.journal.acked_seq}/{per}"

        def complete(hub: HubProcess) -> bool:
            return all(t.get("contiguous_seq") == per for t in hub.report()["terminals"].values())

        wait_until(lambda: complete(hub_a) and complete(observer), 30,
                   "both groups to have every record")
        # every message (resends included) went to the observer and to one member of the
        # group: once both have handled all of them, the counts meet
        wait_until(lambda: _commits(hub_a) + _commits(hub_b) == _commits(observer), 20,
                   "the group's members together to have handled what the observer did")
        shared, own = hub_a.export(), observer.export()
        rep = hub_b.report()
        split = (_commits(hub_a), _commits(hub_b), _commits(observer))
    finally:
        for up in uplinks:
            up.stop()
        for h in (hub_a, hub_b, observer):
            h.stop()
    expected = [(t, seq) for t in terminals for seq in range(1, per + 1)]
    assert [(x["terminal"], x["seq"]) for x in shared] == expected  # each exactly once
    assert [(x["terminal"], x["seq"]) for x in own] == expected
    assert [x["hash"] for x in shared] == [x["hash"] for x in own]
    assert rep["totals"]["chain_breaks"] == 0 and rep["totals"]["terminals_with_gaps"] == 0
    assert split[0] > 0 and split[1] > 0, f"one hub of the group ingested nothing: {split}"



def test_protocol_fields_win_over_the_agents_status_fields(
        running_hub: HubProcess, tmp_path: Path) -> None:
    """§7: the agent adds fields to the status heartbeat, and on a name clash the protocol
    fields win; the hub stores and reports the merged heartbeat."""
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 3)
    clashing = {"v": 99, "state": "degraded", "terminal": "bus-2", "time": 12.5,
                "last_seq": 999, "acked_seq": 998, "outbox": -1, "uplink": "stale",
                "policy_version": "2026.11.1", "clock": "rtc"}
    beats = iter(range(1, 1000))
    up = Uplink(journal, fast_settings(running_hub.broker), "bus-1",
                lambda: dict(clashing, beat=next(beats)))
    up.start()
    try:
        assert up.wait_synced(20)
        assert up.publish_status()
        last_beat = next(beats) - 1  # the beat of the heartbeat just published

        def status() -> dict[str, Any]:
            return dict(running_hub.report()["terminals"]["bus-1"]["status"] or {})

        wait_until(lambda: status().get("beat") == last_beat, 20, "the status after the sync")
        got = status()
    finally:
        up.stop()
    assert {k: got[k] for k in ("v", "state", "terminal", "last_seq", "acked_seq", "outbox")} \
        == {"v": 1, "state": "online", "terminal": "bus-1", "last_seq": 3, "acked_seq": 3,
            "outbox": 0}
    assert isinstance(got["time"], str) and parse_utc(got["time"]) > 0
    assert isinstance(got["uplink"], dict) and got["uplink"]["acks"] >= 1
    assert (got["policy_version"], got["clock"]) == ("2026.11.1", "rtc")  # no clash: kept

