"""An emulated SD card for benchmarks: a throttled loop device with an ext4 file system.

:func:`emulated_sd` (a context manager) creates a sparse backing file, attaches it to a
free loop device (``losetup``), makes an ext4 file system on it, mounts it in a
temporary directory and sets cgroup v1 block-I/O throttle rules for the loop device's
``major:minor`` in the **root** blkio cgroup (``/sys/fs/cgroup/blkio``), where the
processes of this machine live and where cgroup v1 charges buffered writeback — so the
limit holds for the journal's ``fsync`` and for the policy children's writeback alike
(device-mapper, e.g. ``dm-delay``, is not available on these machines). Everything is
undone on the way out, in reverse, even after a failure: throttle rules removed (a rule
is removed by writing ``MAJ:MIN 0``), unmounted, detached, backing file deleted.

The model (:data:`SD_A1`) is the SD Association's Application Performance Class 1
(SD 5.1): at least 1,500 random-read IOPS, 500 random-write IOPS (4 KiB) and 10 MB/s
sustained sequential write (Video Speed Class V10 / Class 10). The issue that asked
for this bench wrote "1,500 write IOPS"; A1's write figure is 500, and 500 is what
:data:`SD_A1` uses (the harsher and the published one); :data:`SD_A1_LOOSE` keeps
1,500 for comparison. The throttle shapes bandwidth and operation rate, not the card's
internal garbage collection pauses, so a real card can only be worse.

Needs root (``losetup``, ``mount``, the cgroup files); :func:`available` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SD_A1", "SD_A1_LOOSE", "SdModel", "available", "emulated_sd"]

BLKIO = Path("/sys/fs/cgroup/blkio")


@dataclass(frozen=True)
class SdModel:
    """Throttle limits of an emulated card: bytes/s and operations/s, 0 = unlimited."""

    name: str
    write_bps: int
    write_iops: int
    read_bps: int = 0
    read_iops: int = 0

    def describe(self) -> str:
        parts = [f"write {self.write_bps / 1e6:g} MB/s, {self.write_iops:,} IOPS"]
        if self.read_iops or self.read_bps:
            parts.append(f"read {self.read_iops:,} IOPS"
                         + (f", {self.read_bps / 1e6:g} MB/s" if self.read_bps else ""))
        return f"{self.name} ({'; '.join(parts)})"


SD_A1 = SdModel("SD A1 (SD 5.1 application class 1)", write_bps=10_000_000, write_iops=500,
                read_iops=1500)
SD_A1_LOOSE = SdModel("SD A1 with 1,500 write IOPS (as the issue put it)",
                      write_bps=10_000_000, write_iops=1500, read_iops=1500)


def available() -> str | None:
    """None when this machine can emulate a card, else why not (for a clear message)."""
    if os.geteuid() != 0:
        return "needs root (losetup, mount and the blkio cgroup files)"
    if not (BLKIO / "blkio.throttle.write_bps_device").exists():
        return f"no cgroup v1 blkio controller at {BLKIO}"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def _run(*cmd: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def _set_rule(name: str, dev: str, value: int) -> None:
    (BLKIO / name).write_text(f"{dev} {value}\n")


@contextlib.contextmanager
def emulated_sd(model: SdModel = SD_A1, size_mb: int = 4096,
                backing_dir: str | Path | None = None,
                dirty_max_bytes: int = 0, journal_mb: int = 0) -> Iterator[Path]:
    """Yield the mount point of a fresh ext4 file system on a loop device throttled as
    ``model`` (``size_mb`` MiB, a sparse file in ``backing_dir``, default the temp dir).
    ``dirty_max_bytes`` (0: the kernel's default) caps the dirty page cache of that
    device (``/sys/class/bdi/MAJ:MIN/max_bytes`` with ``strict_limit``): a writer that
    dirties more is throttled by the kernel, so no backlog bigger than that builds up
    ahead of a tap's fsync. ``journal_mb`` > 0 gives the journal its own file system
    on the same card, mounted at ``<mount point>/../journal``: an ext4 of that size in
    a file written out on the card and attached to a second loop device with direct
    I/O, so its writes and flushes reach the one throttled device as a partition's
    would, with its own ext4 journal (these loop devices do not scan partition
    tables). Raises ``RuntimeError`` naming the command that failed;
    undoes what it did."""
    why = available()
    if why:
        raise RuntimeError(f"cannot emulate an SD card: {why}")
    undo: list[tuple[str, object]] = []
    work = Path(tempfile.mkdtemp(prefix="ykt-sd-", dir=backing_dir))
    try:
        backing = work / "card.img"
        with open(backing, "wb") as f:
            f.truncate(size_mb << 20)
        loop = _run("losetup", "--find", "--show", str(backing))
        undo.append(("losetup", loop))
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
        mnt = work / "mnt"
        mnt.mkdir()
        _run("mount", "-o", "noatime", loop, str(mnt))
        undo.append(("umount", mnt))
        if journal_mb:          # written out before the throttle: no unwritten extents
            part = mnt / ".journal-partition.img"
            with open(part, "wb") as f:
                for _ in range(journal_mb):
                    f.write(b"\0" * (1 << 20))
                os.fsync(f.fileno())
            jloop = _run("losetup", "--direct-io=on", "--find", "--show", str(part))
            undo.append(("losetup", jloop))
            _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                 jloop)
            (work / "journal").mkdir()
            _run("mount", "-o", "noatime", jloop, str(work / "journal"))
            undo.append(("umount", work / "journal"))
        st = os.stat(loop)
        dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        rules = [("blkio.throttle.write_bps_device", model.write_bps),
                 ("blkio.throttle.write_iops_device", model.write_iops),
                 ("blkio.throttle.read_bps_device", model.read_bps),
                 ("blkio.throttle.read_iops_device", model.read_iops)]
        for name, value in rules:
            if value:
                undo.append(("rule", (name, dev)))
                _set_rule(name, dev, value)
        if dirty_max_bytes:
            bdi = Path("/sys/class/bdi") / dev
            # restored through max_ratio: the default max_bytes cannot be written back
            undo.append(("bdi", (bdi / "max_ratio", (bdi / "max_ratio").read_text().strip())))
            undo.append(("bdi", (bdi / "strict_limit",
                                 (bdi / "strict_limit").read_text().strip())))
            (bdi / "max_bytes").write_text(f"{dirty_max_bytes}\n")
            (bdi / "strict_limit").write_text("1\n")
        yield mnt
    finally:
        errors = []
        for kind, what in reversed(undo):
            try:
                if kind == "bdi":            # the loop device outlives us: restore it
                    path, old = what  # type: ignore[misc]
                    Path(path).write_text(f"{old}\n")
                elif kind == "rule":
                    name, dev = what  # type: ignore[misc]
                    _set_rule(name, dev, 0)
                elif kind == "umount":
                    try:
                        _run("umount", str(what))
                    except RuntimeError:      # a file still open: detach it lazily
                        _run("umount", "-l", str(what))
                elif kind == "losetup":
                    _run("losetup", "-d", str(what))
            except (OSError, RuntimeError) as err:
                errors.append(f"{kind} {what}: {err}")
        shutil.rmtree(work, ignore_errors=True)
        if errors:
            raise RuntimeError("emulated SD card not fully removed: " + "; ".join(errors))
