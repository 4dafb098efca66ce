"""Probe: how many bytes the overlay merge writes per merged row, by batch size.

Decision 57 asks whether the merge's disk writes could be cut by merging in larger
batches. This builds the storage bench's terminal (:class:`bench.bench_storage.Bench`:
a 200 k store, 5 k-row deltas) in a temporary directory on this machine's disk, and for
each batch size applies one delta and merges the overlay as the merge child does
(:func:`~agent.policy.stage.merge_overlay`, no pause, no taps), reading the block
device's sectors written (``/sys/block/DEV/stat``, after ``sync``) around the merge::

    python -m bench.probe_merge_volume [--device vda] [--batches 50 500 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from agent.policy.stage import merge_overlay
from agent.store import PolicyStore
from bench.bench_storage import Bench, disk_probe_args


def written_mib(device: str) -> float:
    """MiB written to ``device`` since boot, after ``sync`` (512-byte sectors)."""
    os.sync()
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[6]) / 2048


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="vda", help="the block device under --dir")
    ap.add_argument("--batches", type=int, nargs="+", default=[50, 500, 5000])
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"))
    a = ap.parse_args()
    args = disk_probe_args(1)
    d = Path(tempfile.mkdtemp(prefix="ykt-probe-merge-", dir=a.dir))
    b = Bench(d, args)
    try:
        print("| batch rows | rows merged | MiB written | KiB a row |\n|---|---|---|---|")
        for batch in a.batches:
            b.run_child(b.delta_plan(), [], bursts=False)
            w0 = written_mib(a.device)
            store = PolicyStore(str(b.store_path))
            try:
                moved = merge_overlay(store, batch, pause_s=0)
            finally:
                store.close()
            mib = written_mib(a.device) - w0
            print(f"| {batch:,} | {moved:,} | {mib:.1f} | {mib * 1024 / max(moved, 1):.1f} |",
                  flush=True)
            b.store.refresh()
    finally:
        b.close()
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
