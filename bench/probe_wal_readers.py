"""Probe: does a store lookup ever wait for a writer stopped inside its commit or checkpoint?

The overlay merge child is stopped (``SIGSTOP``) whenever a tap comes and continued only
after ``quiet_s``; if it could be stopped while holding a lock that the tap's reader
needs, the tap would wait that long (decision 54 suspected the WAL truncation). This
probe makes each system call of the writer on the store's files take a second —
``strace`` delay injection (``-P`` limits it to the store's files), which holds
whatever lock the writer holds exactly as a ``SIGSTOP`` at that instant would — while
the writer commits batches as the merge does and ends with the merge's
``wal_checkpoint(TRUNCATE)``, and the reader (the store's own :func:`connect`) looks a
row up every 10 ms. It prints, per delayed system call, the lookups made and the
longest. Needs ``strace`` (``apt install strace``); takes a few minutes::

    python -m bench.probe_wal_readers [--calls ftruncate,fdatasync,fsync,pwrite64,pread64,fcntl]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.store_schema import connect

ROOT = Path(__file__).resolve().parents[1]
"""The project's root: the writer imports :mod:`agent.store_schema` from there."""
ROWS = 20_000
BATCHES = 20          # the writer's commits (50 rows each) before its checkpoint

WRITER = f"""
import sys
from agent.store_schema import connect
c = connect(sys.argv[1])
for i in range({BATCHES}):
    c.execute("BEGIN IMMEDIATE")
    c.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)",
                  (((i * 50 + k) % {ROWS}, "x" * 100) for k in range(50)))
    c.execute("COMMIT")
c.execute("PRAGMA busy_timeout = 1000")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
c.close()
"""


def probe(d: Path, call: str, delay_s: float) -> tuple[int, float, float]:
    """Run the writer with ``call`` on the store's files delayed ``delay_s`` seconds
    each while looking rows up; return (lookups, longest ms, writer's seconds)."""
    db = d / f"{call}.db"
    c = connect(db)
    c.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    c.executemany("INSERT INTO t VALUES (?, ?)", ((k, "y" * 100) for k in range(ROWS)))
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    reader = connect(db)
    paths = [a for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) for a in ("-P", str(p))]
    cmd = ["strace", "-f", "-qq", "-o", os.devnull, *paths, "-e", f"trace={call}",
           "-e", f"inject={call}:delay_enter={int(delay_s * 1e6)}",
           sys.executable, "-c", WRITER, str(db)]
    rnd = random.Random(1)
    lookups, longest = 0, 0.0
    t0 = time.monotonic()
    writer = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    while writer.poll() is None:
        t = time.perf_counter()
        reader.execute("SELECT v FROM t WHERE k = ?", (rnd.randrange(ROWS),)).fetchone()
        longest = max(longest, (time.perf_counter() - t) * 1000)
        lookups += 1
        time.sleep(0.01)
    reader.close()
    if writer.returncode:
        raise SystemExit(f"the writer failed (exit {writer.returncode}) with {call} delayed")
    return lookups, longest, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="ftruncate,fdatasync,fsync,pwrite64,pread64,fcntl",
                    help="system calls to delay, one probe each (comma-separated)")
    ap.add_argument("--delay-s", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="where the store goes (default: the temp dir)")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("needs strace: apt install strace")
    print(f"| writer's call delayed {args.delay_s:g} s | writer took s | lookups | "
          "longest lookup ms |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="ykt-walprobe-", dir=args.dir) as d:
        for call in args.calls.split(","):
            n, longest, took = probe(Path(d), call.strip(), args.delay_s)
            print(f"| `{call}` | {took:.1f} | {n} | {longest:.1f} |", flush=True)


if __name__ == "__main__":
    main()
