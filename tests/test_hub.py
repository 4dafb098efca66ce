"""The hub: store (real SQLite), validation, ingest over a real broker, and the CLI."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli import main
from agent.journal import Journal, canonical, record_hash
from simulator.broker import Mosquitto
from sync.hub.cli import hub_subparsers
from sync.hub.service import Hub, _canonical_text, _decode, parse_batch
from sync.hub.store import IncomingRecord, SqliteHubStore
from sync.uplink import encode_batch
from tests.fixtures.hub import Listener, fast_settings, wait_until

PRODUCTS = [("elderly_free", "accepted"), ("standard", "accepted"), ("", "hotlisted")]


def fill(journal: Journal, n: int) -> None:
    for i in range(n):
        product, reason = PRODUCTS[i % len(PRODUCTS)]
        journal.append({"decision": {"product": product, "reason": reason,
                                     "amount_cents": 200 if product == "standard" else 0},
                        "credential_key": f"{i:032x}"})


def make_record(body: dict[str, Any], claimed: str | None = None) -> IncomingRecord:
    """An IncomingRecord as the hub builds it, claiming ``claimed`` (default: true hash)."""
    text = canonical(body).decode()
    return IncomingRecord(body["seq"], claimed or record_hash(body), body, text,
                          record_hash(body))


def incoming(journal: Journal, after: int = 0, limit: int = 1000) -> list[IncomingRecord]:
    rows = journal.raw_records(after, limit)
    return parse_batch(journal.terminal, encode_batch(journal.terminal, rows)).records


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.db", "bus-1")
    fill(j, 12)
    return j


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteHubStore]:
    s = SqliteHubStore(tmp_path / "hub.db")
    yield s
    s.close()


def test_ingest_is_idempotent(store: SqliteHubStore, journal: Journal) -> None:
    recs = incoming(journal)
    first = store.ingest("bus-1", recs)
    again = store.ingest("bus-1", recs)
    assert (first.contiguous_seq, first.stored, first.duplicates) == (12, 12, 0)
    assert (again.contiguous_seq, again.stored, again.duplicates) == (12, 0, 12)
    rep = store.report()
    assert rep["totals"]["records"] == 12
    assert rep["totals"]["duplicates_rejected"] == 12
    assert rep["totals"]["chain_breaks"] == 0
    assert rep["by_reason"] == {"accepted": 8, "hotlisted": 4}
    assert sum(c["count"] for c in rep["counts"]) == 12
    lines = [json.loads(line) for line in store.export()]
    assert [x["seq"] for x in lines] == list(range(1, 13))
    assert all(record_hash(x["body"]) == x["hash"] for x in lines)


def test_gap_is_reported_then_closed(store: SqliteHubStore, journal: Journal) -> None:
    recs = incoming(journal)
    assert store.ingest("bus-1", recs[:3]).contiguous_seq == 3
    res = store.ingest("bus-1", recs[6:9])
    assert (res.contiguous_seq, res.beyond_gap) == (3, 3)
    gap = store.report()["terminals"]["bus-1"]["gap"]
    assert gap == {"missing_from": 4, "missing_to": 6, "records_beyond": 3}
    assert store.ingest("bus-1", recs[3:6]).contiguous_seq == 9  # chain verified through
    rep = store.report()
    assert rep["terminals"]["bus-1"]["gap"] is None
    assert rep["totals"]["chain_breaks"] == 0


def test_broken_chain_is_stored_flagged_and_reported(store: SqliteHubStore,
                                                     journal: Journal) -> None:
    recs = incoming(journal)
    tampered = dict(recs[4].body, credential_key="f" * 32)  # body changed, hash kept
    recs[4] = make_record(tampered, recs[4].hash)
    relinked = dict(recs[8].body, prev="0" * 64)  # a wrong prev, with a matching hash
    recs[8] = make_record(relinked)
    res = store.ingest("bus-1", recs)
    assert res.contiguous_seq == 12 and res.stored == 12
    rep = store.report()
    problems = {(b["seq"], b["problem"]) for b in rep["chain_breaks"]}
    assert (5, "hash does not match body") in problems
    assert (9, "prev does not match the hash of seq 8") in problems
    assert (10, "prev does not match the hash of seq 9") in problems
    assert rep["terminals"]["bus-1"]["flagged_records"] == 3
    flagged = {x["seq"] for x in map(json.loads, store.export()) if x["flagged"]}
    assert flagged == {5, 9, 10}


def test_conflicting_duplicate_is_a_break(store: SqliteHubStore, journal: Journal) -> None:
    recs = incoming(journal)
    store.ingest("bus-1", recs)
    other = dict(recs[0].body, credential_key="e" * 32)
    store.ingest("bus-1", [make_record(other)])
    rep = store.report()
    assert rep["chain_breaks"][0]["seq"] == 1
    assert "conflicting duplicate" in rep["chain_breaks"][0]["problem"]
    assert rep["totals"]["records"] == 12


@pytest.fixture
def rewrite_stored_body(store: SqliteHubStore) -> Callable[[str, int, str], None]:
    """Change a stored record's body text behind the store's back (a damaged database)."""
    def rewrite(terminal: str, seq: int, text: str) -> None:
        store._db.execute("UPDATE records SET body=? WHERE terminal=? AND seq=?",
                          (text, terminal, seq))
    return rewrite


def test_a_stored_record_is_checked_as_stored_when_its_gap_closes(
        store: SqliteHubStore, journal: Journal,
        rewrite_stored_body: Callable[[str, int, str], None]) -> None:
    # both backends advance the chain with sync.hub.chain.advance_chain: a record that
    # waited beyond a gap is hashed from the text the store holds, as a new one would be
    recs = incoming(journal)
    store.ingest("bus-1", recs[:3])
    assert store.ingest("bus-1", recs[4:6]).beyond_gap == 2          # 5 and 6 wait
    same_json_other_bytes = json.dumps(recs[4].body, sort_keys=True)  # ", " and ": "
    assert json.loads(same_json_other_bytes) == recs[4].body
    rewrite_stored_body("bus-1", 5, same_json_other_bytes)
    assert store.ingest("bus-1", [recs[3]]).contiguous_seq == 6
    rep = store.report()
    assert [(b["seq"], b["problem"]) for b in rep["chain_breaks"]] == [
        (5, "hash does not match body")]
    assert {x["seq"] for x in map(json.loads, store.export()) if x["flagged"]} == {5}


@pytest.mark.parametrize("payload, message", [
    (b"\xff\xfe", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"v":3,"terminal":"bus-1","records":[]}', "unsupported payload version"),
    (b'{"v":1,"terminal":"bus-2","records":[]}', "differs from the topic"),
    (b'{"v":1,"terminal":"bus-1","records":[]}', "non-empty list"),
    (b'{"v":1,"terminal":"bus-1","records":{}}', "non-empty list"),
])
def test_malformed_payloads_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_batch("bus-1", payload)


def test_bad_records_are_dropped_one_by_one(journal: Journal) -> None:
    good = json.loads(encode_batch("bus-1", journal.raw_records(0, 2)))["records"]
    bad: list[Any] = [
        "x", {"seq": 0, "body": {}, "hash": "0" * 64}, {"seq": True, "body": {}, "hash": ""},
        {"seq": 3, "body": [], "hash": "0" * 64}, {"seq": 3, "body": {}, "hash": "XYZ"},
        {"seq": 3, "body": {"terminal": "bus-9"}, "hash": "0" * 64},
        {"seq": 3, "body": {"terminal": "bus-1", "fare": 2.0}, "hash": "0" * 64},
    ]
    batch = parse_batch("bus-1", json.dumps(
        {"v": 1, "terminal": "bus-1", "records": good + bad}).encode())
    assert [r.seq for r in batch.records] == [1, 2]
    assert len(batch.bad_records) == len(bad)
    assert any("floats" in b for b in batch.bad_records)


def test_hub_rejects_and_reports_bad_input_without_crashing(
        broker: Mosquitto, listener: Listener, tmp_path: Path, journal: Journal,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteHubStore(tmp_path / "hub-bad.db")
    hub = Hub(store, fast_settings(broker), {"bus-1"}, client_id="hub-bad")
    hub.start()
    try:
        assert hub.wait_ready(10), "hub did not connect"
        listener.subscribe("ykt/v1/t/+/ack")
        listener.publish("ykt/v1/t/bus-1/tx", b"\x00garbage")
        listener.publish("ykt/v1/t/bus-1/tx", b'{"v":1,"terminal":"bus-2","records":[1]}')
        rows = journal.raw_records(0, 12)
        listener.publish("ykt/v1/t/bus-9/tx", encode_batch("bus-9", rows))  # unknown
        listener.publish("ykt/v1/t/bus-1/status", b"not json")
        # a gap: 1-3 then 7-12; then a good batch after all the bad ones
        listener.publish("ykt/v1/t/bus-1/tx", encode_batch("bus-1", rows[:3]))
        listener.publish("ykt/v1/t/bus-1/tx", encode_batch("bus-1", rows[6:]))
        wait_until(lambda: len(listener.got("ykt/v1/t/bus-1/ack")) >= 2, 10,
                   "the hub's acks for the good batches")
        acks = [json.loads(a) for a in listener.got("ykt/v1/t/bus-1/ack")]
        assert acks == [{"v": 1, "seq": 3}, {"v": 1, "seq": 3}]
        assert listener.got("ykt/v1/t/bus-9/ack") == []
        assert hub.link.callback_errors == 0
    finally:
        hub.stop()
    rep = store.report()
    store.close()
    assert rep["totals"]["rejected"] == {"malformed_payload": 2, "unknown_terminal": 1,
                                         "malformed_status": 1}
    assert rep["terminals"]["bus-1"]["gap"]["missing_from"] == 4
    assert rep["totals"]["terminals_with_gaps"] == 1

    # and the CLI shows the same, in text and JSON
    capsys.readouterr()
    assert main(["hub", "report", "--db", str(tmp_path / "hub-bad.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rep
    assert main(["hub", "report", "--db", str(tmp_path / "hub-bad.db")]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == ("records: 9  terminals: 1  duplicates rejected: 0  chain breaks: 0  "
                       "terminals with gaps: 1")
    assert text[1] == ("rejected: malformed_payload 2, malformed_status 1, "
                       "unknown_terminal 1")
    row = next(line.split() for line in text if line.startswith("bus-1 "))
    assert row == ["bus-1", "9", "3", "0", "0", "missing", "4..6"]
    rejects = text[text.index("rejects:") + 1:]
    assert sorted((r.split()[0], r.split()[1], r.split()[2]) for r in rejects) == sorted(
        (r["kind"], r["terminal"], str(r["count"])) for r in rep["rejects"])
    assert any("unknown_terminal" in r and "bus-9" in r for r in rejects)


def test_cli_report_and_export(tmp_path: Path, journal: Journal,
                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.db"
    s = SqliteHubStore(db)
    s.ingest("bus-1", incoming(journal))
    s.record_reject("bus-7", "unknown_terminal", "terminal not in the configured list")
    s.close()
    capsys.readouterr()
    assert main(["hub", "export", "--db", str(db), "--format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["seq"] == 1
    assert main(["hub", "report", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "records: 12" in text and "unknown_terminal" in text and "elderly_free" in text
    assert main(["hub", "report", "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["rejected"] == {"unknown_terminal": 1}
    assert main(["hub", "report", "--db", str(tmp_path / "missing.db")]) == 2


def test_hub_subcommands_can_be_extended_by_other_modules() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    hub_subparsers(sub).add_parser("policy").set_defaults(func=lambda a: 0)
    from sync.hub.cli import register

    register(sub)
    assert hub_subparsers(sub) is hub_subparsers(sub)
    assert parser.parse_args(["hub", "policy"]).func(None) == 0
    assert parser.parse_args(["hub", "report", "--db", "x"]).db == Path("x")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(), _json, max_size=6))
def test_hub_canonical_text_matches_the_journal(body: dict[str, Any]) -> None:
    text = canonical(body)
    assert _canonical_text(_decode(text.decode())) == text.decode()


@pytest.mark.parametrize("number", ["1.5", "1e3", "-0.0", "NaN", "Infinity"])
def test_hub_refuses_floats_like_the_journal(number: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        _canonical_text(_decode(f'{{"a":[{number}]}}'))
