"""Protocol v2 parsing and the terminal's ack rules, without a broker: parsers of outside
input never throw anything but ``ValueError`` (deep nesting, seq >= 2^63, lone
surrogates, oversize), a batch's work is bounded by its own size, and the uplink acts on
a lower ack only when it answers a batch sent after its acked point (acks of several
hubs legitimately arrive out of order)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.journal import Journal
from sync.acks import SentBatch, UplinkIdentity
from sync.hub.service import parse_batch
from sync.hub.store import SqliteHubStore
from sync.link import MqttSettings
from sync.signed import (
    BadSignature,
    SignedAck,
    encode_ack,
    encode_hub_status,
    parse_ack_v2,
    parse_hub_status,
)
from sync.uplink import Uplink
from tests.fixtures.trust import TrustDirs, make_trust
from tests.test_hub import fill
from tests.test_hub_process import chain

HUB_KEY = ec.generate_private_key(ec.SECP256R1())
HUB_PUB = HUB_KEY.public_key()
H = "ab" * 32


def ack(seq: int, answers: int = 5, batch: str = "aa", **kw: str) -> SignedAck:
    fields = {"terminal": "bus-1", "epoch": "", "hash": H, "hub_store": "01", **kw}
    return SignedAck(fields["terminal"], fields["epoch"], seq, fields["hash"],
                     fields["hub_store"], answers, H, batch)


NASTY = [b"[" * 200_000, b'{"a":' * 50_000, b"\xff\xfe", b'"\\ud800"', b"{}", b"[]",
         b'{"v":2,"seq":9223372036854775808}', b"x" * 5000, b"1e999999", b"NaN"]


@pytest.mark.parametrize("payload", NASTY)
def test_ack_and_hub_status_parsers_only_raise_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse_ack_v2(payload, HUB_PUB)
    with pytest.raises(ValueError):
        parse_hub_status(payload, HUB_PUB)


def test_signed_ack_round_trip_and_every_alteration_is_refused() -> None:
    good = encode_ack(HUB_KEY, ack(7))
    assert parse_ack_v2(good, HUB_PUB) == ack(7)
    msg = json.loads(good)
    for field, value in [("seq", 8), ("hash", "cd" * 32), ("hub_store", "02"),
                         ("epoch", "0f"), ("terminal", "bus-2")]:
        with pytest.raises(BadSignature):
            parse_ack_v2(json.dumps({**msg, field: value}).encode(), HUB_PUB)
    with pytest.raises(BadSignature):
        parse_ack_v2(json.dumps({**msg, "answers": {**msg["answers"], "seq": 6}}).encode(),
                     HUB_PUB)
    with pytest.raises(ValueError, match="2\\^63"):
        parse_ack_v2(json.dumps({**msg, "seq": 2**63}).encode(), HUB_PUB)
    with pytest.raises(ValueError):  # a lone surrogate in a signed field
        parse_ack_v2(good.replace(b'"bus-1"', b'"bus-\\ud800"'), HUB_PUB)
    status = encode_hub_status(HUB_KEY, "hub-1", "online", 1)
    assert parse_hub_status(status, HUB_PUB) == "online"
    with pytest.raises(BadSignature):
        parse_hub_status(status.replace(b"hub-1", b"hub-2"), HUB_PUB)


def test_tx_parser_refuses_nesting_huge_seqs_and_surrogates() -> None:
    deep_body = ('{"v":1,"terminal":"bus-1","records":[{"seq":1,"hash":"' + H + '","body":'
                 '{"terminal":"bus-1","x":' + "[" * 5000 + "]" * 5000 + "}}]}").encode()
    for payload in (b"[" * 200_000, b'{"v":1,"terminal":"bus-1","records":' + b"[" * 100_000,
                    deep_body):
        with pytest.raises(ValueError):
            parse_batch("bus-1", payload)
    rows = chain("bus-1", 2)
    payload = ('{"v":1,"terminal":"bus-1","records":['
               f'{{"seq":9223372036854775808,"body":{rows[0][1]},"hash":"{rows[0][2]}"}},'
               f'{{"seq":1,"body":{{"terminal":"bus-1","s":"\\ud800"}},"hash":"{H}"}},'
               f'{{"seq":1,"body":{{"terminal":"bus-1","x":1.5}},"hash":"{H}"}},'
               f'{{"seq":2,"body":{rows[1][1]},"hash":"{rows[1][2]}"}}]}}').encode()
    batch = parse_batch("bus-1", payload)
    assert [r.seq for r in batch.records] == [2]
    assert len(batch.bad_records) == 3 and "2^63-1" in batch.bad_records[0]


def test_a_batch_with_far_apart_seqs_costs_what_its_records_cost(tmp_path: Path) -> None:
    """Seq 1 and 2^62 in one batch, on a store already holding 30,000 records of the
    terminal: existing records are looked up by the batch's own seqs, not by range."""
    store = SqliteHubStore(tmp_path / "hub.db")
    rows = chain("bus-1", 30_000)
    for i in range(0, len(rows), 10_000):
        store.ingest("bus-1", parse_batch("bus-1", (
            '{"v":1,"terminal":"bus-1","records":[' + ",".join(
                f'{{"seq":{s},"body":{b},"hash":"{h}"}}' for s, b, h in rows[i:i + 10_000])
            + "]}").encode()).records)
    far = parse_batch("bus-1", ('{"v":1,"terminal":"bus-1","records":['
                                f'{{"seq":1,"body":{rows[0][1]},"hash":"{rows[0][2]}"}},'
                                f'{{"seq":{2**62},"body":{rows[1][1]},"hash":"{H}"}}]}}'
                                ).encode()).records
    tracemalloc.start()
    try:
        result = store.ingest("bus-1", far)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    store.close()
    assert (result.duplicates, result.stored, result.contiguous_seq) == (1, 1, 30_000)
    assert peak < 1_000_000, f"ingest of 2 records peaked at {peak} bytes"


@pytest.fixture
def uplink(tmp_path: Path) -> Uplink:
    trust: TrustDirs = make_trust(tmp_path)
    ident = UplinkIdentity.load(trust.enroll("bus-1", tmp_path))
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 60)
    up = Uplink(journal, MqttSettings(), "bus-1", identity=ident)
    up.identity = UplinkIdentity(ident.key, HUB_PUB)  # acks signed by HUB_KEY here
    return up


def signed(up: Uplink, seq: int, batch: str, head: int, store: str = "01") -> bytes:
    j = up.journal
    return encode_ack(HUB_KEY, SignedAck("bus-1", up.epoch, seq, j.hash_at(seq) or H, store,
                                         head, j.hash_at(head) or H, batch))


def test_lower_acks_move_the_terminal_only_when_they_prove_the_hub_lost_data(
        uplink: Uplink) -> None:
    up, j = uplink, uplink.journal
    topic = "ykt/v1/t/bus-1/ack"
    up._sent.add("b1", SentBatch(1, 20, j.hash_at(20) or "", 0))
    up._sent.add("b2", SentBatch(21, 40, j.hash_at(40) or "", 20))
    up._sent.add("b3", SentBatch(41, 60, j.hash_at(60) or "", 40))
    up._on_ack(topic, signed(up, 40, "b2", 40))
    assert j.acked_seq == 40
    up._on_ack(topic, signed(up, 20, "b1", 20))  # late ack of an earlier batch: old news
    assert j.acked_seq == 40 and up.stats["resyncs"] == 0
    up._on_ack(topic, signed(up, 20, "b3", 60))  # answers a batch sent at 40: data lost
    assert j.acked_seq == 20 and up.stats["resyncs"] == 1
    up._on_ack(topic, signed(up, 40, "b2", 40))  # a replay from before the resync
    assert j.acked_seq == 20 and up.stats["stale_acks"] == 1
    other = encode_ack(HUB_KEY, SignedAck("bus-1", "ff", 20, j.hash_at(20) or H, "01", 60,
                                          j.hash_at(60) or H, "b3"))
    up._on_ack(topic, other)
    assert up.stats["foreign_acks"] == 1
    up._sent.add("b4", SentBatch(21, 60, j.hash_at(60) or "", 20))
    bad_hash = encode_ack(HUB_KEY, SignedAck("bus-1", up.epoch, 50, H, "01", 60,
                                             j.hash_at(60) or H, "b4"))
    up._on_ack(topic, bad_hash)
    assert up.stats["mismatched_acks"] == 1 and j.acked_seq == 20
    up._on_ack(topic, signed(up, 60, "b4", 60, store="02"))  # a new store: adopted
    assert j.acked_seq == 60 and up.status_payload()["hub_store"] == "02"
    assert "records_lost_at_hub" not in up.status_payload()
