"""Start (or reuse) pcscd with vpcd virtual readers, and a rig of virtual cards on them.

pcsc-lite serves one socket per machine (``/run/pcscd/pcscd.comm``). :class:`Pcscd` reuses
a pcscd that is already running (its readers then come from ``/etc/reader.conf.d/vpcd``:
``<FRIENDLYNAME> 00 00`` on CHANNELID, ``… 00 01`` on CHANNELID+1), or starts
``pcscd --foreground -c DIR`` with its own reader configuration (one vpcd entry: vpcd keeps
its slots in a static per-slot table, so a second entry would clobber the first; the
Debian build has two slots, ``Virtual PCD 00 00`` and ``Virtual PCD 00 01``) and stops
it on :meth:`Pcscd.close`. Only a pcscd we started can be restarted (:meth:`Pcscd.restart`).

:func:`start_virtual_reader` is what the demo and the tests use::

    rig = start_virtual_reader()            # pcscd + virtual PSAM in its reader
    rig.present(holder)                     # a CardHolder's card enters the field
    rig.pull()                              # and leaves
    source = PcscCardSource(p, reader=rig.card_reader, psam_reader=rig.psam_reader)
    rig.close()
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from drivers.psam import TEST_KEYS, ReferenceKeys
from simulator.population import CardHolder
from simulator.process import Service, launch, stop_process, wait_until
from simulator.vcard import VirtualCard, VirtualPsam, VpcdSlot, card_for

__all__ = ["Pcscd", "VirtualCardRig", "VirtualReader", "missing_components",
           "pcscd_running", "start_virtual_reader"]

log = logging.getLogger(__name__)

SOCKET = Path("/run/pcscd/pcscd.comm")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
SYSTEM_CONFIG = Path("/etc/reader.conf.d/vpcd")
FRIENDLY = "Virtual PCD"
BASE_PORT = 0x8C7B  # 35963


@dataclass(frozen=True, slots=True)
class VirtualReader:
    """A vpcd reader slot: its PC/SC name and the TCP port a virtual card connects to."""

    name: str
    port: int


def missing_components() -> str:
    """Why virtual readers cannot run here ("" when pcscd and vpcd are installed)."""
    if not (shutil.which("pcscd") or Path("/usr/sbin/pcscd").exists()):
        return "pcscd is not installed (apt-get install pcscd)"
    if not VPCD_DRIVER.exists():
        return "vpcd is not installed (apt-get install vsmartcard-vpcd)"
    try:
        import smartcard  # noqa: F401
    except ImportError:
        return "pyscard is not installed (pip install 'yikatong-edge[pcsc]')"
    return ""


def pcscd_running() -> bool:
    """True if something answers on pcscd's socket."""
    if not SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(SOCKET))
            return True
        except OSError:
            return False


def _system_readers() -> list[VirtualReader]:
    friendly, port = FRIENDLY, BASE_PORT
    if SYSTEM_CONFIG.exists():
        for line in SYSTEM_CONFIG.read_text().splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "FRIENDLYNAME":
                friendly = value.strip().strip('"')
            elif key == "CHANNELID":
                port = int(value.strip(), 0)
    return [VirtualReader(f"{friendly} 00 00", port), VirtualReader(f"{friendly} 00 01", port + 1)]


class Pcscd(Service):
    """A pcscd with vpcd readers: reused if running, else started here.

    Raises ``FileNotFoundError`` if pcscd/vpcd are missing, ``TimeoutError`` if the readers
    do not appear within ``start_timeout`` seconds.
    """

    def __init__(self, *, workdir: str | Path | None = None,
                 reuse: bool = True, start_timeout: float = 10.0) -> None:
        why = missing_components()
        if why:
            raise FileNotFoundError(why)
        self.exe = shutil.which("pcscd") or "/usr/sbin/pcscd"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ykt-pcscd-"))
        self.reuse, self.start_timeout = reuse, start_timeout
        self.owned = False
        self._proc: subprocess.Popen[bytes] | None = None
        self.readers: list[VirtualReader] = []

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        conf = self.workdir / "reader.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        for stale in conf.glob("vpcd*"):
            stale.unlink()
        (conf / "vpcd").write_text(
            f'FRIENDLYNAME "{FRIENDLY}"\nDEVICENAME /dev/null:0x{BASE_PORT:04X}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{BASE_PORT:04X}\n")
        return conf

    def start(self) -> None:
        """Reuse a running pcscd or start ours; wait until its readers are listed."""
        if self.running or (self.readers and not self.owned and pcscd_running()):
            return
        if self.reuse and not self.owned and pcscd_running():
            self.readers = _system_readers()
            log.info("reusing the running pcscd (readers %s)", [r.name for r in self.readers])
            self._wait_readers()
            return
        conf = self._write_config()
        self._proc = launch([self.exe, "--foreground", "-c", str(conf)],
                            self.workdir / "pcscd.log")
        self.owned = True
        self.readers = [VirtualReader(f"{FRIENDLY} 00 {s:02X}", BASE_PORT + s) for s in (0, 1)]
        try:
            self._wait_readers()
        except BaseException:
            self.stop()
            raise

    def _wait_readers(self) -> None:
        from smartcard import scard

        want = {r.name for r in self.readers}

        def listed() -> bool:
            hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hr != scard.SCARD_S_SUCCESS:
                return False
            hr, names = scard.SCardListReaders(ctx, [])
            scard.SCardReleaseContext(ctx)
            return bool(hr == scard.SCARD_S_SUCCESS and want <= set(names))

        wait_until(listed, timeout=self.start_timeout, interval=0.05,
                   failure=f"pcscd readers {sorted(want)} did not appear within "
                           f"{self.start_timeout} s",
                   proc=self._proc, log_path=self.workdir / "pcscd.log")

    def wait_card(self, reader: str, present: bool = True, timeout: float = 3.0) -> None:
        """Wait until pcscd reports ``reader`` with (or without) a card.

        Raises ``TimeoutError``.
        """
        from smartcard import scard

        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hr != scard.SCARD_S_SUCCESS:
            raise TimeoutError("pcscd is not reachable")
        try:
            deadline = time.monotonic() + timeout
            state = scard.SCARD_STATE_UNAWARE
            while True:
                left = deadline - time.monotonic()
                hr, result = scard.SCardGetStatusChange(ctx, int(max(left, 0) * 1000),
                                                        [(reader, state)])
                if hr == scard.SCARD_S_SUCCESS:
                    state = result[0][1] & ~scard.SCARD_STATE_CHANGED
                    if bool(state & scard.SCARD_STATE_PRESENT) == present:
                        return
                if left <= 0:
                    raise TimeoutError(f"{reader}: card {'present' if present else 'absent'} "
                                       f"not reported within {timeout} s")
                if hr != scard.SCARD_S_SUCCESS and hr != scard.SCARD_E_TIMEOUT:
                    time.sleep(0.05)
        finally:
            scard.SCardReleaseContext(ctx)

    def stop(self) -> None:
        """Stop pcscd if we started it (a reused one is left alone). Safe twice."""
        proc, self._proc = self._proc, None
        stop_process(proc)

    def restart(self) -> None:
        """Stop and start our pcscd: every reader vanishes and comes back.

        Raises ``RuntimeError`` for a reused pcscd (not ours to restart).
        """
        if not self.owned:
            raise RuntimeError("pcscd was not started here; it cannot be restarted")
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()


class VirtualCardRig:
    """pcscd plus its two vpcd slots.

    With ``psam_in_reader`` (default) slot 0 is the card reader and slot 1 holds a
    :class:`VirtualPsam` (use ``psam="pcsc", psam_reader=rig.psam_reader``). Without it both
    slots are card readers (a dual-interface terminal; use an in-process PSAM), which is
    what "two cards at once" needs.
    """

    def __init__(self, pcscd: Pcscd, keys: ReferenceKeys = TEST_KEYS, *,
                 psam_in_reader: bool = True) -> None:
        self.pcscd, self.keys = pcscd, keys
        first, second = pcscd.readers[0], pcscd.readers[1]
        for reader in (first, second):  # a card left by an earlier rig must be seen gone first
            try:
                pcscd.wait_card(reader.name, present=False, timeout=1.5)
            except TimeoutError:
                log.warning("%s still reports a card that is not ours", reader.name)
        self.card_reader = first.name
        self.card_slot = VpcdSlot(first.port, name=first.name)
        self.psam = VirtualPsam(keys)
        self.psam_reader = self.second_reader = ""
        self.psam_slot = self.second_slot = None
        if psam_in_reader:
            self.psam_reader = second.name
            self.psam_slot = VpcdSlot(second.port, name=second.name)
            self.psam_slot.insert(self.psam)
            pcscd.wait_card(second.name)       # the PSAM must be seen before the first tap
        else:
            self.second_reader = second.name
            self.second_slot = VpcdSlot(second.port, name=second.name)

    def present(self, card: CardHolder | VirtualCard, **flags: object) -> VirtualCard:
        """Put a card in the card reader's field (a CardHolder becomes its virtual card,
        ``flags`` go to :func:`~simulator.vcard.card_for`, e.g. ``pull_after=3``)."""
        vcard = card_for(card, self.keys, **flags) if isinstance(card, CardHolder) else card
        self.card_slot.insert(vcard)
        return vcard

    def pull(self) -> None:
        """Take the card out of the field."""
        self.card_slot.remove()

    def present_two(self, first: CardHolder | VirtualCard, second: CardHolder | VirtualCard) -> None:
        """Two cards at once, one in each card reader's field.

        Raises ``RuntimeError`` when slot 1 holds the PSAM (``psam_in_reader``).
        """
        if self.second_slot is None:
            raise RuntimeError("two cards need both slots as card readers (psam_in_reader=False)")
        vsecond = card_for(second, self.keys) if isinstance(second, CardHolder) else second
        self.present(first)
        self.second_slot.insert(vsecond)

    def pull_all(self) -> None:
        self.card_slot.remove()
        if self.second_slot is not None:
            self.second_slot.remove()

    def close(self, *, stop_pcscd: bool = True) -> None:
        """Close every slot and (unless ``stop_pcscd`` is False) our pcscd. Safe twice."""
        for slot in (self.card_slot, self.psam_slot, self.second_slot):
            if slot is not None:
                slot.close()
        if stop_pcscd:
            self.pcscd.close()


def start_virtual_reader(*, keys: ReferenceKeys = TEST_KEYS, workdir: str | Path | None = None,
                         reuse: bool = True, psam_in_reader: bool = True) -> VirtualCardRig:
    """Start (or reuse) pcscd with vpcd readers and put a virtual PSAM in its reader.

    Raises ``FileNotFoundError`` if pcscd/vpcd are missing, ``TimeoutError`` if pcscd
    does not come up.
    """
    pcscd = Pcscd(workdir=workdir, reuse=reuse)
    pcscd.start()
    try:
        return VirtualCardRig(pcscd, keys, psam_in_reader=psam_in_reader)
    except BaseException:
        pcscd.close()
        raise
