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
