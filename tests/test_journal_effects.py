"""The journal's counters and passback times: an append-only log, values in memory
(``agent.journal_effects``, ``docs/decisions.md`` 52)."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from pathlib import Path

from agent.journal import Journal

DAY = 86400.0
T0 = 1_800_000_000.0          # 2027-01-15 08:00 UTC


def _holder(i: int) -> str:
    return hashlib.sha256(f"holder-{i}".encode()).hexdigest()


def _tap(j: Journal, i: int, at: float, day: str = "2027-01-15") -> None:
    j.append({"reason": "accepted", "accepted": True},
             counters={(_holder(i), "elderly_free", day): 1},
             last_tap=(f"cred-{i}", "route:19"), at=at)


def _wal_pages(wal: Path) -> list[int]:
    """The page number of every frame in a WAL file (header 32 bytes; each frame a
    24-byte header, page number first, then one page)."""
    data = wal.read_bytes()
    if len(data) < 32:
        return []
    page_size = struct.unpack(">I", data[8:12])[0]
    step = 24 + page_size
    return [struct.unpack(">I", data[o:o + 4])[0] for o in range(32, len(data) - step + 1, step)]


def test_counters_and_passback_come_back_after_a_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", "T1")
    for k in range(3):
        _tap(j, 7, T0 + k)
    _tap(j, 8, T0 + 10)
    j.append({"reason": "refund"}, counters={(_holder(7), "elderly_free", "2027-01-15"): -1},
             at=T0 + 11)
    j.append({"reason": "refund"}, counters={(_holder(8), "elderly_free", "2027-01-15"): -5},
             at=T0 + 12)                                      # never below 0
    assert j.count(_holder(7), "elderly_free", "2027-01-15") == 2
    j.close()
    j = Journal(tmp_path / "j.db", "T1")
    assert j.count(_holder(7), "elderly_free", "2027-01-15") == 2
    assert j.count(_holder(8), "elderly_free", "2027-01-15") == 0
    assert j.count(_holder(7), "elderly_free", "2027-01-16") == 0
    assert j.last_tap("cred-7", "route:19") == T0 + 2
    assert j.last_tap("cred-7", "route:20") is None


def test_a_tap_writes_neighbouring_pages_not_one_per_holder(tmp_path: Path) -> None:
    """The checkpoint's cost: 64 taps of 64 holders in a journal that already counts 5,000
    holders touch a handful of pages at the tables' ends. As B-trees keyed by the holders'
    random hashes they touched one page per holder per table (here 128 and more)."""
    j = Journal(tmp_path / "j.db", "T1")
    for i in range(5000):
        _tap(j, i, T0 + i * 0.01)
    j.checkpoint()                                         # the WAL starts empty
    assert _wal_pages(tmp_path / "j.db-wal") == []
    for i in range(64):
        _tap(j, 100_000 + i * 37, T0 + 60 + i)
    pages = set(_wal_pages(tmp_path / "j.db-wal"))
    assert len(pages) <= 16, sorted(pages)
    j.close()


def test_a_journal_with_counter_tables_is_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path, "T1").close()
    db = sqlite3.connect(path)                 # the tables as journals before 52 kept them
    db.executescript("""
        CREATE TABLE counters (holder_key TEXT NOT NULL, counter TEXT NOT NULL,
            day TEXT NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY (holder_key, counter, day)) WITHOUT ROWID;
        CREATE TABLE last_taps (credential_key TEXT NOT NULL, scope TEXT NOT NULL,
            ts REAL NOT NULL, seq INTEGER NOT NULL,
            PRIMARY KEY (credential_key, scope)) WITHOUT ROWID;
    """)
    db.execute("INSERT INTO counters VALUES ('h1', 'elderly_free', '2027-01-15', 3)")
    db.execute("INSERT INTO last_taps VALUES ('c1', 'route:19', ?, 9)", (T0,))
    db.commit()
    db.close()
    j = Journal(path, "T1")
    assert j.count("h1", "elderly_free", "2027-01-15") == 3
    assert j.last_tap("c1", "route:19") == T0
    j.append({"reason": "accepted"}, counters={("h1", "elderly_free", "2027-01-15"): 1},
             last_tap=("c1", "route:19"), at=T0 + 5)
    j.close()
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert not {"counters", "last_taps"} & tables
    j = Journal(path, "T1")
    assert j.count("h1", "elderly_free", "2027-01-15") == 4
    assert j.last_tap("c1", "route:19") == T0 + 5


def test_a_prune_forgets_old_days_and_a_reopen_does_not_bring_them_back(
        tmp_path: Path) -> None:
    now = [T0]
    path = tmp_path / "j.db"
    j = Journal(path, "T1", clock=lambda: now[0])
    _tap(j, 1, T0 - 5 * DAY, day="2027-01-10")
    _tap(j, 2, T0 - 1 * DAY, day="2027-01-14")
    _tap(j, 3, T0, day="2027-01-15")
    j.mark_acked(3)
    j.prune(2 * DAY)           # cutoff 01-13 08:00: counters before 01-11, taps before it
    assert j.count(_holder(1), "elderly_free", "2027-01-10") == 0
    assert j.count(_holder(2), "elderly_free", "2027-01-14") == 1
    assert j.last_tap("cred-1", "route:19") is None
    assert j.last_tap("cred-2", "route:19") == T0 - DAY
    j.close()
    j = Journal(path, "T1", clock=lambda: now[0])
    assert j.count(_holder(1), "elderly_free", "2027-01-10") == 0
    assert j.last_tap("cred-1", "route:19") is None
    assert j.count(_holder(3), "elderly_free", "2027-01-15") == 1
    now[0] = T0 + 10 * DAY
    j.prune(0)                      # everything old: the log's rows go too
    assert sqlite3.connect(path).execute("SELECT count(*) FROM effects").fetchone()[0] == 0
    j.close()
