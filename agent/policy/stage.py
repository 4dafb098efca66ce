"""Stage and switch one verified bundle into the store: the write side of an apply.

:func:`execute_plan` runs an :class:`ApplyPlan` whose parts are already downloaded and
hash-checked: a **delta** is applied in one SQLite transaction on the current generation
(checked against its base inside the transaction); a **snapshot** is streamed into a new
generation file, the rows it inserted checked against the manifest's totals, then made
current by an atomic pointer switch. Either way a crash at any instant leaves the old or the new
policy, never a mix (see :mod:`agent.store`).

By default the terminal runs this in a separate process (``python -m agent.policy.stage
PLAN.json``) so parsing and inserting never compete with taps for the GIL; the process's
resident memory stays bounded (streaming, fixed batches, a 16 MiB page cache).
Exit status: 0 applied, 3 base mismatch, 4 bundle refused, 1 other failure; the last
stdout line is a JSON object ``{"ok": …}`` or ``{"error": reason, "detail": …}``.
``python -m agent.policy.stage --compact STORE [BATCH_ROWS]`` merges the delta overlay into
the big tables (:meth:`agent.store.PolicyStore.compact`), printing ``{"phase": "compacted",
"rows": n}`` after each batch and ``{"ok": true, "rows": n}`` at the end.

While it writes, a :class:`WritebackPacer` starts the kernel's writeback of the files it
dirties every few milliseconds (Linux ``sync_file_range``), so dirty pages never pile up
into one long flush that the taps' journal ``fsync`` would wait behind. A delta's WAL is
left to :func:`agent.policy.walsync.trickle_sync` instead, which makes the commit durable
in 32 KiB pieces (``docs/decisions.md`` 56); so is the merge's, batch by batch, and the
pages each of its checkpoints copies into the database file go out the same way
(:func:`agent.policy.walsync.checkpoint_sync`, decision 58). Where the kernel cannot tell
dirty pages (no ``cachestat``) the pacer does it all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.policy import walsync
from agent.policy.errors import BundleRefused, PolicyError, Refusal
from agent.policy.parts import DataKind, Mode, read_rows
from agent.store import PolicyInfo, PolicyStore, StoreError
from agent.store_generations import active_generation, build_generation, switch_generation

__all__ = ["ApplyPlan", "WritebackPacer", "execute_plan", "main", "merge_checkpoint_pages",
           "merge_overlay"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class ApplyPlan:
    """What to write. Paths point at verified part files; ``artifacts`` maps an artifact
    name to ``(sha256, path)``. ``expect`` is the delta's base (None for a snapshot).
    ``totals`` (snapshots only) are the manifest's row counts, checked against the rows
    inserted; a delta is not counted (that would scan the whole store)."""

    store: str
    mode: str                                  # "snapshot" | "delta"
    info: dict[str, Any]
    expect: dict[str, Any] | None = None
    entitlements: str | None = None
    hotlist: str | None = None
    artifacts: dict[str, tuple[str, str]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    rows_per_s: int = 0          # a snapshot's write rate cap (rows/s; 0: none), SD cards

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ApplyPlan:
        d = json.loads(text)
        d["artifacts"] = {k: tuple(v) for k, v in d.get("artifacts", {}).items()}
        return cls(**d)


DELTA_CHUNK_ROWS = 2_000
DELTA_CHUNK_PAUSE_S = 0.05
"""A delta's rows are written in chunks of ``DELTA_CHUNK_ROWS`` with a pause of
``DELTA_CHUNK_PAUSE_S`` seconds after each (at most 40,000 rows/s: a 100k-row delta in
about 3 s of its 5 s budget). SQLite spills the transaction's pages to the WAL as it
goes and the :class:`WritebackPacer` writes them back in small pieces, so the I/O is
spread thin instead of one burst at commit. ``bench/bench_policy.py``, 10M
entitlements, five sorted 100k-row deltas pooled: tap p99 during the apply ×1.39 of
idle (×1.09 in another run); with 20 ms pauses (1.5 s) ×2.43–2.53."""


PACE_CREDIT_S = 0.05
"""The most a paced snapshot may run ahead of its rate after a pause (seconds' worth of
rows): the seconds a child spends stopped for taps are not saved up for a burst."""


def _rows(path: str | None, kind: DataKind, mode: Mode, op: str | None,
          progress: Progress | None, rows_per_s: int = 0) -> Iterator[tuple[str, ...]]:
    """The rows of a part; a delta's paced in chunks, a snapshot's at most ``rows_per_s``
    (checked every 1,000 rows; 0: unpaced)."""
    if path is None:
        return
    due = time.monotonic()
    for n, row in enumerate(read_rows(path, kind, mode, op), 1):
        yield row
        if mode == "delta" and n % DELTA_CHUNK_ROWS == 0:
            time.sleep(DELTA_CHUNK_PAUSE_S)
        elif rows_per_s and n % 1000 == 0:
            # a token bucket: time spent stopped (SIGSTOP for taps) is no credit for a
            # burst afterwards — at most PACE_CREDIT_S seconds' worth of rows
            now = time.monotonic()
            due = max(due, now - PACE_CREDIT_S) + 1000 / rows_per_s
            if due > now:
                time.sleep(due - now)
        if progress is not None and n % 20_000 == 0:
            progress(f"{kind}{op or ''}", n)


class WritebackPacer:
    """Start writeback of the files ``paths()`` names every ``period_s`` seconds.

    Uses :func:`walsync.write_back` (``sync_file_range`` with ``WAIT_BEFORE | WRITE |
    WAIT_AFTER``) on each whole file in its own thread: data only, no journal commit,
    and it waits for each file's writeback to finish before starting more, so the dirty
    backlog stays at what is written in one period and at most that much is queued
    ahead of a tap's journal ``fsync`` (with ``WRITE`` alone,
    one bench run: longest tap during the overlay merge 18–29 ms; with the waits 9.5 ms).
    A no-op where the call does not exist (not Linux).
    Use as a context manager; files that do not exist yet are looked for again.
    """

    def __init__(self, paths: Callable[[], Iterable[Path]], period_s: float = 0.005) -> None:
        self.paths = paths
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WritebackPacer:
        if walsync.HAS_WRITE_BACK:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        fds: dict[Path, int] = {}
        try:
            while not self._stop.wait(self.period_s):
                for path in self.paths():
                    fd = fds.get(path)
                    if fd is None:
                        try:
                            fd = fds[path] = os.open(path, os.O_RDONLY)
                        except OSError:
                            continue
                    with contextlib.suppress(OSError):   # the writer's fsync reports it
                        walsync.write_back(fd)
        finally:
            for fd in fds.values():
                os.close(fd)


def _store_files(base: str, wal: bool = True) -> Callable[[], list[Path]]:
    """The files an apply to ``base`` writes: the current generation and (if ``wal``) its
    WAL, and any generation being staged."""
    def paths() -> list[Path]:
        gen = active_generation(base)
        staged = Path(base).parent.glob(Path(base).name + ".g*.staging")
        return [gen, *([gen.with_name(gen.name + "-wal")] if wal else []), *staged]
    return paths


def _trickle(plan: ApplyPlan) -> bool:
    """Whether ``plan``'s commit is made durable by :func:`walsync.trickle_sync` (a delta,
    where the kernel can tell dirty pages): then the :class:`WritebackPacer` leaves the
    WAL alone, or it would write the whole commit back at once."""
    return plan.mode == "delta" and walsync.supported(Path(plan.store).parent)


def _artifacts(plan: ApplyPlan) -> dict[str, tuple[str, bytes]]:
    return {name: (digest, Path(p).read_bytes()) for name, (digest, p) in plan.artifacts.items()}


def execute_plan(plan: ApplyPlan, progress: Progress | None = None) -> PolicyInfo:
    """Apply ``plan`` to the store; return the new policy identity.

    Raises :class:`BundleRefused` (malformed part, wrong totals), :class:`StoreError`
    (delta base mismatch) or ``sqlite3.Error``/``OSError``; the old policy then stays.
    """
    info = PolicyInfo(**plan.info)
    artifacts = _artifacts(plan)
    if plan.mode == "delta":
        trickle = _trickle(plan)
        store = PolicyStore(plan.store)
        try:
            store.apply(
                remove_entitlements=((k, n) for k, n in _rows(
                    plan.entitlements, "entitlements", "delta", "-", None)),
                remove_hotlist=(r[0] for r in _rows(plan.hotlist, "hotlist", "delta", "-", None)),
                entitlements=_rows(plan.entitlements, "entitlements", "delta", "+", progress),
                hotlist=_rows(plan.hotlist, "hotlist", "delta", "+", progress),
                artifacts=artifacts, info=info,
                expect=PolicyInfo(**plan.expect) if plan.expect else None,
                wal_sync=walsync.trickle_sync if trickle else None,
                checkpoint_sync=walsync.checkpoint_sync if trickle else None)
        finally:
            store.close()
        if progress:
            progress("committed", 0)
        return info
    if plan.entitlements is None or plan.hotlist is None:
        raise BundleRefused(Refusal.MALFORMED, "a snapshot needs entitlements and hotlist parts")
    gen, counts = build_generation(
        plan.store, info=info, artifacts=artifacts, progress=progress,
        entitlements=_rows(plan.entitlements, "entitlements", "snapshot", "+", None,
                           plan.rows_per_s),
        hotlist=_rows(plan.hotlist, "hotlist", "snapshot", "+", None, plan.rows_per_s))
    try:
        for t, want in plan.totals.items():
            if t in counts and counts[t] != want:
                raise BundleRefused(Refusal.MALFORMED,
                                    f"snapshot holds {counts[t]} {t}, manifest says {want}")
        if progress:
            progress("staged", 0)
        switch_generation(plan.store, gen)
    except BaseException:
        if gen.exists() and active_generation(plan.store) != gen:
            gen.unlink()
        raise
    if progress:
        progress("switched", 0)
    return info


def _peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM, KiB; 0 if unknown). Unlike ``ru_maxrss``
    it does not include the parent's memory inherited through fork before exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.policy.stage PLAN.json [--pause-after PHASE]`` (see module doc).

    ``--pause-after`` sleeps forever after reporting that phase (for crash tests).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--compact"]:
        return _compact_main(args[1], *(int(a) for a in args[2:3]))
    pause = None
    if "--pause-after" in args:
        i = args.index("--pause-after")
        pause = args[i + 1]
        del args[i:i + 2]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    plan = ApplyPlan.from_json(Path(args[0]).read_text(encoding="utf-8"))

    def progress(phase: str, n: int) -> None:
        sys.stdout.write(json.dumps({"phase": phase, "rows": n}) + "\n")
        sys.stdout.flush()
        if pause is not None and phase.startswith(pause):
            while True:
                time.sleep(3600)

    try:
        with WritebackPacer(_store_files(plan.store, wal=not _trickle(plan))):
            info = execute_plan(plan, progress)
    except StoreError as err:
        print(json.dumps({"error": Refusal.BASE_MISMATCH.value, "detail": str(err)}))
        return 3
    except PolicyError as err:
        print(json.dumps({"error": err.refusal.value, "detail": err.detail}))
        return 4
    except (sqlite3.Error, OSError) as err:
        print(json.dumps({"error": Refusal.APPLY_FAILED.value, "detail": str(err)}))
        return 1
    print(json.dumps({"ok": True, "policy": info.label, "peak_rss_kb": _peak_rss_kb()}))
    return 0


def merge_checkpoint_pages(batch_rows: int) -> int:
    """The merge's WAL auto-checkpoint (pages) for batches of ``batch_rows`` where the
    kernel has no ``cachestat``: a quarter of a batch, at least 16, so that no checkpoint
    queues many page writes."""
    return max(16, batch_rows // 4)


def merge_overlay(store: PolicyStore, batch_rows: int, **kw: Any) -> int:
    """Merge ``store``'s overlay as the merge child does; return the rows merged. Each
    batch's WAL and checkpoint are made durable in :data:`walsync.CHUNK_BYTES` pieces
    (:func:`walsync.trickle_sync`, :func:`walsync.checkpoint_sync`) where the kernel can
    tell dirty pages, else a :class:`WritebackPacer` and SQLite's own checkpoints every
    :func:`merge_checkpoint_pages`. ``kw`` goes to :meth:`PolicyStore.compact`
    (``after_batch``, ``pause_s``, ``stop``). Raises as that does."""
    if walsync.supported(store.path.parent):
        return store.compact(batch_rows=batch_rows, wal_sync=walsync.trickle_sync,
                             checkpoint_sync=walsync.checkpoint_sync, **kw)
    with WritebackPacer(_store_files(str(store.path))):
        return store.compact(batch_rows=batch_rows,
                             checkpoint_pages=merge_checkpoint_pages(batch_rows), **kw)


def _compact_main(store_path: str, batch_rows: int = 500) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def report(n: int) -> None:
        sys.stdout.write(json.dumps({"phase": "compacted", "rows": n}) + "\n")
        sys.stdout.flush()

    try:
        store = PolicyStore(store_path)
        try:
            moved = merge_overlay(store, batch_rows, after_batch=report)
        finally:
            store.close()
    except (sqlite3.Error, OSError, StoreError) as err:
        print(json.dumps({"error": Refusal.APPLY_FAILED.value, "detail": str(err)}))
        return 1
    print(json.dumps({"ok": True, "rows": moved}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
