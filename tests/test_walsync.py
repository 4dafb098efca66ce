"""A delta's commit is made durable in small pieces, not one burst (issue 15, decision 56):
the pages really are dirty after SQLite's ``COMMIT`` and clean, a piece at a time, after
:func:`agent.policy.walsync.trickle_sync` — measured with the kernel's ``cachestat``."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from agent.policy import stage, walsync
from agent.policy.parts import write_part
from agent.store import WAL_CHECKPOINT_BYTES, PolicyInfo, PolicyStore

pytestmark = pytest.mark.skipif(not walsync.supported(Path(__file__).parent),
                                reason="the kernel has no cachestat (Linux < 6.5)")

PIECE = walsync.CHUNK_BYTES


def _dirty(path: Path, off: int = 0, length: int = 0) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        n = walsync.dirty_bytes(fd, off, length)
    finally:
        os.close(fd)
    assert n is not None
    return n


def test_trickle_sync_writes_a_piece_at_a_time_then_flushes(tmp_path: Path) -> None:
    f = tmp_path / "wal"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT)
    try:            # page by page, as SQLite writes its WAL (one big write() would make
        def write(first: int, pieces: int) -> None:        # large folios)
            for off in range(first * PIECE, (first + pieces) * PIECE, 4096):
                os.pwrite(fd, os.urandom(4096), off)
        write(0, 8)
        os.fsync(fd)                     # eight pieces' worth, written out; then six
        write(0, 2)                      # dirty again, pieces 2 and 3 left clean
        write(4, 4)
    finally:
        os.close(fd)
    assert _dirty(f) == 6 * PIECE
    seen: list[tuple[int, int, int]] = []     # (offset, that piece dirty, the file dirty)
    synced: list[int] = []

    def datasync(fd: int) -> None:
        synced.append(len(seen))
        os.fdatasync(fd)

    pieces = walsync.trickle_sync(f, after_chunk=lambda off: seen.append(
        (off, _dirty(f, off, PIECE), _dirty(f))), datasync=datasync)
    assert pieces == 6
    assert [s[0] // PIECE for s in seen] == [0, 1, 4, 5, 6, 7]     # in order, clean skipped
    assert all(s[1] == 0 for s in seen)                             # each piece written out
    assert [s[2] // PIECE for s in seen] == [5, 4, 3, 2, 1, 0]      # one piece at a time
    assert synced == [6]                      # the flush once, after the last piece


def test_a_delta_commits_without_an_fsync_and_is_durable_before_apply_returns(
        tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "store.db")
    try:
        store.apply(replace=True, info=PolicyInfo("c/1", 1, "h1"),
                    entitlements=[(f"h{i}", "elderly", "", "") for i in range(2000)],
                    hotlist=[])
        wal = store.active_path.with_name(store.active_path.name + "-wal")
        at_sync: list[int] = []

        def wal_sync(path: Path) -> None:
            assert path == wal
            at_sync.append(_dirty(path))       # what SQLite's COMMIT left unwritten
            walsync.trickle_sync(path)

        store.apply(info=PolicyInfo("c/1", 2, "h2"), wal_sync=wal_sync,
                    entitlements=[(f"n{i}", "student", "", "") for i in range(5000)])
        assert at_sync and at_sync[0] >= 2 * PIECE    # no fsync in the commit: dirty
        assert _dirty(wal) == 0                       # durable when apply returned
        assert store.info == PolicyInfo("c/1", 2, "h2")
        with sqlite3.connect(store.active_path) as other:
            assert other.execute("SELECT count(*) FROM entitlements_overlay").fetchone() == (
                5000,)
    finally:
        store.close()


def test_a_grown_wal_is_still_checkpointed(tmp_path: Path) -> None:
    """The trickled commit turns SQLite's automatic checkpoint off and does its work: once
    the WAL outgrows :data:`WAL_CHECKPOINT_BYTES` its pages reach the database file."""
    store = PolicyStore(tmp_path / "store.db")
    try:
        store.apply(replace=True, info=PolicyInfo("c/1", 1, "h1"), entitlements=[],
                    hotlist=[])
        with sqlite3.connect(store.active_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db_size = store.active_path.stat().st_size
        wal = store.active_path.with_name(store.active_path.name + "-wal")
        v, sizes = 1, list[int]()
        while not sizes or sizes[-1] <= WAL_CHECKPOINT_BYTES:
            v += 1
            store.apply(info=PolicyInfo("c/1", v, f"h{v}"), wal_sync=walsync.trickle_sync,
                        entitlements=[(f"v{v}-{i:05d}", "student", "", "")
                                      for i in range(4000)])
            sizes.append(wal.stat().st_size)
            if sizes[-1] <= WAL_CHECKPOINT_BYTES:     # below the bound: the WAL holds it
                assert store.active_path.stat().st_size == db_size
        assert len(sizes) > 2
        assert store.active_path.stat().st_size > db_size + WAL_CHECKPOINT_BYTES // 2
        assert store.overlay_rows() == 4000 * (v - 1)
    finally:
        store.close()


def test_the_apply_child_trickles_a_deltas_wal(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = PolicyStore(tmp_path / "store.db")
    store.apply(replace=True, info=PolicyInfo("c/1", 1, "h1"), entitlements=[], hotlist=[])
    store.close()
    ent = tmp_path / "ent.delta"
    write_part(ent, "entitlements", "delta",
               ((f"{i:032x}", "elderly", "", "") for i in range(3000)))
    calls: list[tuple[Path, int]] = []
    real = walsync.trickle_sync
    monkeypatch.setattr(walsync, "trickle_sync",
                        lambda p: calls.append((p, real(p))))
    plan = stage.ApplyPlan(store=str(tmp_path / "store.db"), mode="delta",
                           info=asdict(PolicyInfo("c/1", 2, "h2")),
                           expect=asdict(PolicyInfo("c/1", 1, "h1")), entitlements=str(ent))
    assert stage.execute_plan(plan) == PolicyInfo("c/1", 2, "h2")
    assert [(p.name.endswith("-wal"), n > 0) for p, n in calls] == [(True, True)]


def _unsynced_checkpoint(store: PolicyStore, rows: int, tag: str) -> tuple[int, list[int]]:
    """Commit ``rows`` overlay rows and checkpoint them as the paced merge does
    (``synchronous=OFF``: SQLite syncs nothing); return the WAL's page size and the pages
    its frames named. The database file is made clean first, so what is dirty is the
    checkpoint's."""
    db = store.active_path
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        os.sync()
        assert _dirty(db) == 0
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO entitlements_overlay VALUES (?, 'student', '', '', 0)",
                         ((f"{tag}{i:05d}",) for i in range(rows)))
        conn.execute("COMMIT")
        page_size, pages = walsync.wal_frames(store.wal_path)
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    finally:
        conn.close()
    return page_size, pages


def _store_with(tmp_path: Path, rows: int) -> PolicyStore:
    store = PolicyStore(tmp_path / "store.db")
    store.apply(replace=True, info=PolicyInfo("c/1", 1, "h1"), hotlist=[],
                entitlements=[(f"h{i:06d}", "elderly", "", "") for i in range(rows)])
    return store


def test_wal_frames_name_every_page_a_checkpoint_writes(tmp_path: Path) -> None:
    store = _store_with(tmp_path, 20_000)
    try:
        db = store.active_path
        wal = store.wal_path
        page_size, pages = _unsynced_checkpoint(store, 3000, "a")
        assert page_size == 4096 and len(pages) > 10
        dirty = {off // page_size + 1 for off in range(0, db.stat().st_size, page_size)
                 if _dirty(db, off, page_size)}
        assert dirty and dirty <= set(pages)       # nothing the list would miss
        with sqlite3.connect(db, isolation_level=None) as conn:   # the WAL restarts:
            conn.execute("INSERT INTO hotlist_overlay VALUES ('k', 'card', '', '', 0)")
        size2, pages2 = walsync.wal_frames(wal)              # older frames, other salts
        assert size2 == page_size and 0 < len(pages2) < len(pages) // 4
        assert walsync.wal_frames(tmp_path / "none-wal") == (0, [])
        (tmp_path / "junk-wal").write_bytes(b"not a wal" * 100)
        assert walsync.wal_frames(tmp_path / "junk-wal") == (0, [])
    finally:
        store.close()


def test_checkpoint_sync_writes_the_pages_a_piece_at_a_time(tmp_path: Path) -> None:
    store = _store_with(tmp_path, 20_000)
    try:
        db = store.active_path
        _unsynced_checkpoint(store, 3000, "a")
        before = _dirty(db)
        assert before > 2 * PIECE                    # SQLite did not sync the checkpoint
        seen: list[tuple[int, int, int]] = []        # (offset, piece dirty, file dirty)
        synced: list[int] = []

        def datasync(fd: int) -> None:
            synced.append(len(seen))
            os.fdatasync(fd)

        n = walsync.checkpoint_sync(db, store.wal_path, datasync=datasync,
                                    after_chunk=lambda off: seen.append(
                                        (off, _dirty(db, off, PIECE), _dirty(db))))
        assert n == len(seen) > 2
        assert [s[0] for s in seen] == sorted({s[0] for s in seen})     # in file order
        assert all(s[0] % PIECE == 0 and s[1] == 0 for s in seen)       # each written out
        left = [before] + [s[2] for s in seen]
        assert all(a > b for a, b in zip(left, left[1:], strict=False))  # a piece at a time
        assert left[-1] == 0 and synced == [n]       # then flushed, once
        assert walsync.checkpoint_sync(db, store.wal_path, datasync=datasync) == 0
        assert synced == [n]
    finally:
        store.close()


def test_the_merge_makes_each_checkpoint_durable_in_pieces(tmp_path: Path) -> None:
    """The paced merge: no fsync by SQLite, each batch's WAL then its checkpointed pages
    written back piece by piece before the next batch — and a checkpoint left unsynced by
    a killed merge is synced before the first batch."""
    store = _store_with(tmp_path, 20_000)
    try:
        db = store.active_path
        _unsynced_checkpoint(store, 500, "k")                # as a killed merge leaves it
        store.apply(info=PolicyInfo("c/1", 2, "h2"), wal_sync=walsync.trickle_sync,
                    entitlements=[(f"n{i:05d}", "student", "", "") for i in range(2500)])
        log: list[tuple[str, int, int]] = []       # (step, file dirty before, pieces)

        def wal_sync(path: Path) -> None:
            dirty = _dirty(path)
            log.append(("wal", dirty, walsync.trickle_sync(path)))

        def checkpoint_sync(d: Path, w: Path) -> None:
            dirty = _dirty(d)
            log.append(("db", dirty, walsync.checkpoint_sync(d, w)))
            assert _dirty(d) == 0

        batches: list[int] = []
        assert store.compact(batch_rows=500, pause_s=0, wal_sync=wal_sync,
                             checkpoint_sync=checkpoint_sync,
                             after_batch=batches.append) == 3000
        assert batches == [500, 1000, 1500, 2000, 2500, 3000]
        assert [s for s, _d, _n in log] == ["db"] + ["wal", "db"] * 6
        assert log[0][1] > 0 and log[0][2] > 0          # the killed merge's pages, first
        assert all(d > 0 and n > 1 for _s, d, n in log[1:])   # SQLite synced none of it
        assert store.overlay_rows() == 0 and _dirty(db) == 0
        assert store.counts()["entitlements"] == 20_000 + 3000
        assert store.wal_path.stat().st_size == 0      # truncated
    finally:
        store.close()


def test_the_merge_child_and_a_delta_sync_a_killed_merges_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store_with(tmp_path, 20_000)        # open throughout, as the daemon's reader:
    try:                                         # the last close would checkpoint and sync
        db = store.active_path
        _unsynced_checkpoint(store, 500, "k")
        assert _dirty(db) > 0
        _delta_then_merge(tmp_path, db, monkeypatch)
    finally:
        store.close()


def _delta_then_merge(tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    real = walsync.checkpoint_sync
    monkeypatch.setattr(walsync, "checkpoint_sync",
                        lambda d, w: calls.append((Path(d).name, real(d, w))))
    ent = tmp_path / "ent.delta"
    write_part(ent, "entitlements", "delta",
               ((f"{i:032x}", "elderly", "", "") for i in range(1000)))
    plan = stage.ApplyPlan(store=str(tmp_path / "store.db"), mode="delta",
                           info=asdict(PolicyInfo("c/1", 2, "h2")),
                           expect=asdict(PolicyInfo("c/1", 1, "h1")), entitlements=str(ent))
    assert stage.execute_plan(plan) == PolicyInfo("c/1", 2, "h2")
    assert calls == [(db.name, calls[0][1])] and calls[0][1] > 0    # before the delta
    assert _dirty(db) == 0
    calls.clear()
    assert stage.main(["--compact", str(tmp_path / "store.db"), "400"]) == 0
    assert calls[0] == (db.name, 0)             # nothing left to sync at the start
    assert len(calls) == 1 + 4 and all(n > 0 for _p, n in calls[1:])   # 1,500 rows
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM entitlements_overlay").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM entitlements").fetchone() == (21_500,)
