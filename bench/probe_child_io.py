"""Probe: taps beside the policy children's I/O, the old way vs decisions 56 and 58's.

Decision 56 changes how the apply child writes a delta: its commit skips SQLite's
``fsync`` and is written back 32 KiB at a time (:mod:`agent.policy.walsync`); decision
58 does the same for the merge child's commits and checkpoints. This
probe measures what that buys in one run, side by side: the storage bench's terminal (:class:`bench.bench_storage.Bench`: a 200 k store, 5 k-row
deltas, a tap every 5 ms) runs units of ``--phase`` alternately the old way (the same
children with ``cachestat`` reported missing, which turns the pieces off) and the new, idle
taps after each unit, and prints p99/p99.9/longest per arm and its ratio to idle. Runs
on this machine's disk in a temporary directory (``--dir``); a few minutes; with
``--writer`` beside the storage bench's other writer (2 MB/s). With ``--phase
snapshot`` the two arms run the same code: the spread between them is the machine's
noise (a control)::

    python -m bench.probe_child_io [--phase delta|snapshot|merge] [--taps 5000] [--writer]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.bench_policy import pct
from bench.bench_storage import WRITER_CHUNK_KB, Bench, disk_probe_args, writer

ROOT = Path(__file__).resolve().parents[1]
"""The project's root: the old-way child imports :mod:`agent` from there."""
MERGE_EVERY = 10
"""Delta units between two overlay merges (untimed), which truncate the store's WAL."""

OLD_WAY = """#!/bin/sh
[ "$YKT_PROBE_ARM" = old ] || exec "{python}" "$@"
shift 2      # -m agent.policy.stage
exec "{python}" -c '
import sys
sys.path.insert(0, "{root}")
from agent.policy import stage, walsync
walsync.supported = lambda directory: False
sys.exit(stage.main(sys.argv[1:]))' "$@"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("delta", "snapshot", "merge"), default="delta")
    ap.add_argument("--taps", type=int, default=5_000, help="taps timed per arm")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="where the terminal's data directory goes (default /var/tmp)")
    ap.add_argument("--writer", action="store_true",
                    help="another process writes 2 MB/s to the same file system meanwhile")
    a = ap.parse_args()
    args = disk_probe_args(a.taps)
    d = Path(tempfile.mkdtemp(prefix="ykt-probe-child-io-", dir=a.dir))
    try:
        wrapper = d / "python"
        wrapper.write_text(OLD_WAY.format(python=sys.executable, root=ROOT), encoding="utf-8")
        wrapper.chmod(0o755)
        b = Bench(d, args)
        b.runner.python = b.compactor.python = str(wrapper)
        idle: list[float] = []
        arms: dict[str, list[float]] = {"old": [], "new": []}
        noise = (writer(d / "noise.bin", 2.0, WRITER_CHUNK_KB) if a.writer
                 else contextlib.nullcontext())
        try:
            with noise:
                b.warm()
                k = 0
                while min(len(x) for x in arms.values()) < a.taps:
                    arm = ("old", "new")[k % 2]
                    k += 1
                    os.environ["YKT_PROBE_ARM"] = arm
                    os.sync()
                    b.unit(a.phase, arms[arm])
                    os.sync()
                    b.unit("idle", idle, idle_taps=100)
                    if a.phase == "delta" and k % MERGE_EVERY == 0:
                        os.environ["YKT_PROBE_ARM"] = "new"
                        b.unit("merge", [])      # empties the overlay, truncates the WAL
        finally:
            b.close()
        ref = pct(idle, 0.999)
        print(f"{a.phase}{' beside the writer' if a.writer else ''}:")
        print(f"{a.phase}: {'arm':5} {'taps':>6} {'p99':>6} {'p99.9':>6} {'max':>6}  "
              "ratio p99.9 / max")
        print(f"{a.phase}: {'idle':5} {len(idle):6} {pct(idle, 0.99):6.2f} {ref:6.2f} "
              f"{max(idle):6.1f}")
        for arm, xs in arms.items():
            print(f"{a.phase}: {arm:5} {len(xs):6} {pct(xs, 0.99):6.2f} {pct(xs, 0.999):6.2f} "
                  f"{max(xs):6.1f}  ×{pct(xs, 0.999) / ref:.2f} / ×{max(xs) / max(idle):.2f}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
