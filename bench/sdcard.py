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

One way the emulation is *kinder* than a card (``docs/decisions.md`` 47): blk-throttle
saves up unspent budget while bios keep arriving without ever having to queue. With a
4 KiB write and ``fdatasync`` every 5 ms on the journal partition (the bench's idle
taps), a 1 MiB ``dd conv=fsync`` on the data partition took 5 ms; alone, 113 ms (4 MiB:
251 vs 423 ms), as on a 10 MB/s card. So another process's burst is free while only
taps run, and costs its full time once something else (a policy child) has spent the
saved budget — with such a writer, the bench's *writer* rows would compare phases with an
idle that no card has. The bench's writer therefore writes in 64 KiB pieces (decision
48), which the card's dirty cap paces at the card's rate whatever the throttle saved.

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


def _partition(card: str, offset_mb: int, size_mb: int,
               undo: list[tuple[str, object]]) -> str:
    """A loop device with direct I/O over ``size_mb`` MiB of the block device ``card``
    from ``offset_mb`` MiB: a partition of the emulated card. Returns its path."""
    dev = _run("losetup", "--direct-io=on", "--offset", str(offset_mb << 20),
               "--sizelimit", str(size_mb << 20), "--find", "--show", card)
    undo.append(("losetup", dev))
    if (Path("/sys/block") / Path(dev).name / "loop" / "dio").read_text().strip() != "1":
        raise RuntimeError(f"{dev}: the kernel refused direct I/O over {card}")
    return dev


def _set_rule(name: str, dev: str, value: int) -> None:
    (BLKIO / name).write_text(f"{dev} {value}\n")


@contextlib.contextmanager
def emulated_sd(model: SdModel = SD_A1, size_mb: int = 4096,
                backing_dir: str | Path | None = None,
                dirty_max_bytes: int = 0, journal_mb: int = 0,
                direct_io: bool = False) -> Iterator[Path]:
    """Yield the mount point of a fresh ext4 file system on a loop device throttled as
    ``model`` (``size_mb`` MiB, a sparse file in ``backing_dir``, default the temp dir).
    ``dirty_max_bytes`` (0: the kernel's default) caps the dirty page cache of that
    device (``/sys/class/bdi/MAJ:MIN/max_bytes`` with ``strict_limit``): a writer that
    dirties more is throttled by the kernel, so no backlog bigger than that builds up
    ahead of a tap's fsync (with partitions: the data partition's). ``journal_mb`` > 0
    splits the card into two partitions — the data file system (``size_mb -
    journal_mb``) and the journal's own, mounted at ``<mount point>/../journal`` — each a
    loop device with direct I/O over its range of the throttled card device (these loop
    devices scan no partition tables), so both share the card's one queue and budget
    as partitions do, while each has its own ext4 journal and a flush of one is a flush
    of the card. The journal partition's range of the backing file is written out first
    (no host-side allocation inside a tap's flush). ``direct_io`` attaches the card
    device itself with direct I/O (a backing file on a real disk: the host's page cache
    and its writeback stay out; with an unthrottled ``model`` this is the disk with the
    SD layout's partitions) and writes out the whole file, because a flush of either
    partition is then an ``fsync`` of the backing file on the host and commits the
    host's allocations for the other's new blocks too (a 33.5 ms tap right after a
    delta child started; a real partition allocates nothing). Raises ``RuntimeError``
    naming the command that failed; undoes what it did."""
    why = available()
    if why:
        raise RuntimeError(f"cannot emulate an SD card: {why}")
    undo: list[tuple[str, object]] = []
    work = Path(tempfile.mkdtemp(prefix="ykt-sd-", dir=backing_dir))
    try:
        backing = work / "card.img"
        with open(backing, "wb") as f:
            f.truncate(size_mb << 20)
            # with direct I/O all of it (docstring: no host allocation in a tap's flush)
            f.seek(0 if direct_io else (size_mb - journal_mb) << 20)
            for _ in range(size_mb if direct_io else journal_mb):
                f.write(b"\0" * (1 << 20))
            os.fsync(f.fileno())
        card = _run("losetup", *(["--direct-io=on"] if direct_io else []), "--find", "--show",
                    str(backing))
        undo.append(("losetup", card))
        data = card
        if journal_mb:
            # two partitions of the card: direct-I/O loop devices over ranges of the
            # card's own block device (these loop devices scan no partition tables), so
            # every write and flush of either reaches the one throttled queue, and a
            # flush of one is a flush of the card, not an fsync on the other's ext4
            data = _partition(card, 0, size_mb - journal_mb, undo)
            jpart = _partition(card, size_mb - journal_mb, journal_mb, undo)
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", data)
        mnt = work / "mnt"
        mnt.mkdir()
        _run("mount", "-o", "noatime", data, str(mnt))
        undo.append(("umount", mnt))
        if journal_mb:
            _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                 jpart)
            (work / "journal").mkdir()
            _run("mount", "-o", "noatime", jpart, str(work / "journal"))
            undo.append(("umount", work / "journal"))
        st = os.stat(card)
        dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        rules = [("blkio.throttle.write_bps_device", model.write_bps),
                 ("blkio.throttle.write_iops_device", model.write_iops),
                 ("blkio.throttle.read_bps_device", model.read_bps),
                 ("blkio.throttle.read_iops_device", model.read_iops)]
        for name, value in rules:
            if value:
                undo.append(("rule", (name, dev)))
                _set_rule(name, dev, value)
        st = os.stat(data)          # buffered writes dirty the data partition's pages
        dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
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
