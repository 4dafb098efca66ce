"""Journal: gapless sequence, hash chain, tamper detection, acks, prune, terminal ownership."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.journal import GENESIS, Journal, JournalError, canonical, record_hash


def _fill(j: Journal, n: int, t0: float = 1_000_000.0) -> None:
    for i in range(n):
        j.append({"reason": "accepted", "accepted": True, "amount": i}, at=t0 + i)


def test_sequence_chain_and_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", "T1")
    _fill(j, 50)
    recs = j.records(0, 100)
    assert [r.seq for r in recs] == list(range(1, 51))
    assert recs[0].body["prev"] == GENESIS
    assert all(b.body["prev"] == a.hash for a, b in zip(recs, recs[1:], strict=False))
    j.close()
    j2 = Journal(tmp_path / "j.db", "T1")          # reopening continues the chain
    r = j2.append({"reason": "expired", "accepted": False})
    assert r.seq == 51 and r.body["prev"] == recs[-1].hash
    assert j2.verify() == []


def test_tampering_is_detected(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", "T1")
    _fill(j, 10)
    db = sqlite3.connect(tmp_path / "j.db")
    body = json.loads(db.execute("SELECT body FROM records WHERE seq=4").fetchone()[0])
    body["amount"] = 0
    db.execute("UPDATE records SET body=? WHERE seq=4", (canonical(body).decode(),))
    db.commit()
    db.close()
    breaks = j.verify()
    assert [b.seq for b in breaks] == [4] and "hash" in breaks[0].problem


def test_floats_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", "T1")
    with pytest.raises(ValueError, match="floats are not allowed"):
        j.append({"amount": 1.5})
    assert j.last_seq == 0


@pytest.mark.expect_log("agent.journal", r"hub acked seq 99 beyond last journaled seq 10")
def test_acks_are_monotonic_and_bounded(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", "T1")
    _fill(j, 10)
    assert j.mark_acked(6) == 6
    assert j.mark_acked(3) == 6           # never backwards
    assert j.mark_acked(99) == 6          # never beyond what was written
    assert j.pending_count == 4
    j.close()
    assert Journal(tmp_path / "j.db", "T1").acked_seq == 6


def test_prune_only_acked_and_old_and_keeps_the_newest(tmp_path: Path) -> None:
    now = [2_000_000.0]
    j = Journal(tmp_path / "j.db", "T1", clock=lambda: now[0])
    _fill(j, 20, t0=now[0] - 60)          # times now-60 … now-41
    assert j.prune(retention_s=0) == 0    # nothing acked yet: nothing goes
    j.mark_acked(20)
    assert j.prune(retention_s=50) == 10   # records older than 50 s: seq 1..10
    remaining = [r.seq for r in j.records(0, 100)]
    assert remaining[-1] == 20 and remaining[0] > 1
    j.mark_acked(20)
    j.prune(retention_s=0)
    assert [r.seq for r in j.records(0, 100)] == [20]   # the newest stays to anchor the chain
    r = j.append({"reason": "accepted", "accepted": True})
    assert r.seq == 21 and j.verify() == []


def test_a_journal_belongs_to_one_terminal(tmp_path: Path) -> None:
    Journal(tmp_path / "j.db", "T1").close()
    with pytest.raises(JournalError, match="terminal 'T1', not 'T2'"):
        Journal(tmp_path / "j.db", "T2")


def test_record_hash_is_sha256_of_canonical_json() -> None:
    body = {"b": 1, "a": "老年卡", "prev": GENESIS}
    assert canonical(body) == '{"a":"老年卡","b":1,"prev":"' .encode() + GENESIS.encode() + b'"}'
    import hashlib

    assert record_hash(body) == hashlib.sha256(canonical(body)).hexdigest()


def test_a_large_prune_goes_in_small_batches_and_misses_nothing(tmp_path: Path) -> None:
    now = [3_000_000.0]
    j = Journal(tmp_path / "j.db", "T1", clock=lambda: now[0])
    _fill(j, 1000, t0=now[0] - 5000)
    j.mark_acked(1000)
    assert j.prune(retention_s=10, batch=64) == 999      # every acked old one but the newest
    assert [r.seq for r in j.records(0, 10)] == [1000]
    assert j.append({"reason": "accepted"}).seq == 1001 and j.verify() == []
