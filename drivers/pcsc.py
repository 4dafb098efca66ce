"""PC/SC card readers through pcscd (pyscard): watch readers, read SSC cards, emit presentations.

:class:`PcscCardSource` blocks in ``SCardGetStatusChange`` on the watched readers plus the
``\\\\?PnP?\\Notification`` pseudo-reader (no polling loop of its own), so a card arrival
wakes it as soon as pcscd sees it (pcscd itself polls readers whose driver cannot signal
events, every 400 ms for vpcd). On arrival it connects, runs :func:`drivers.ssc.read_ssc`
with the PSAM, disconnects with a reset, and emits one :class:`~agent.model.Presentation`
with either a credential or a rejection:

* card pulled mid-read (any PC/SC link error) → ``Rejection(CARD_REMOVED, journal=False)``;
* a card arriving while another watched reader holds a card → ``MULTIPLE_CARDS`` (请单张刷卡);
* no SSC application → ``NOT_SSC``; authentication failures → ``CARD_AUTH_FAILED``;
  unreadable answers → ``READ_ERROR`` with a specific detail; PSAM failures → ``INTERNAL_ERROR``.

pcscd stopping, restarting or a reader vanishing make the loop drop its context and
re-establish it (back-off ``retry_s``); it never exits before :meth:`stop`.
Only keyed hashes and masked strings leave this module; raw numbers and names are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from smartcard import scard

from agent.model import Presentation, PresentationKind, Reason, Rejection
from agent.pseudonym import Pseudonymizer
from drivers.base import PresentationSource
from drivers.exceptions import ConfigError, ReaderError
from drivers.options import DriverOptions, PcscCardOptions, expect
from drivers.psam import TEST_KEYS, PcscPsam, Psam, PsamError, ReferenceKeys, SoftPsam
from drivers.ssc import (
    DEFAULT_NEEDS,
    CardError,
    CardRemoved,
    SscCard,
    check_needs,
    credential_from,
    read_ssc,
)

__all__ = ["PNP_READER", "PcscCardSource", "PcscTransport", "credential_from"]

log = logging.getLogger(__name__)

PNP_READER = "\\\\?PnP?\\Notification"
MULTIPLE_CARDS_TEXT = "请单张刷卡"

_OK = scard.SCARD_S_SUCCESS
_LINK_LOST = {c & 0xFFFFFFFF for c in (
    scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NOT_TRANSACTED, scard.SCARD_W_RESET_CARD,
    scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_UNPOWERED_CARD, scard.SCARD_F_COMM_ERROR,
    scard.SCARD_E_READER_UNAVAILABLE, scard.SCARD_E_COMM_DATA_LOST, scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED, scard.SCARD_E_INVALID_HANDLE, scard.SCARD_E_UNKNOWN_READER,
)}
_PRESENT = scard.SCARD_STATE_PRESENT
_GONE = scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE | scard.SCARD_STATE_IGNORE


def _code(hr: int) -> int:
    return hr & 0xFFFFFFFF


def _present(state: int) -> bool:
    return bool(state & _PRESENT) and not state & scard.SCARD_STATE_MUTE


class CardWasReset(CardRemoved):
    """pcscd (e.g. its own power-up right after insertion) or another client reset the card."""


class PcscTransport:
    """One card connection on context ``ctx``. :meth:`transmit` raises :class:`CardRemoved`
    on a lost link (:class:`CardWasReset` if the card was reset under it).

    ``reset_on_close``: disconnect with a card reset (an SSC card: clears its security
    state) or leave the card as it is (a PSAM). Connecting raises :class:`CardRemoved`
    (no card) or :class:`~drivers.exceptions.ReaderError` (mute card).
    """

    def __init__(self, ctx: Any, reader: str, *, reset_on_close: bool = True) -> None:
        hr, card, proto = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED,
                                             scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        if hr != _OK:
            if _code(hr) == _code(scard.SCARD_W_UNRESPONSIVE_CARD):
                raise ReaderError("card does not answer (mute)", device=reader, code=_code(hr))
            raise CardRemoved(f"connect failed: {scard.SCardGetErrorMessage(hr)}")
        self.reader, self._card, self._proto = reader, card, proto
        self._disposition = scard.SCARD_RESET_CARD if reset_on_close else scard.SCARD_LEAVE_CARD
        self._own_ctx: Any = None

    @classmethod
    def open(cls, reader: str, *, reset_on_close: bool = True) -> PcscTransport:
        """Connect on a context of its own (released by :meth:`close`) to the reader named
        ``reader`` (exact name, else substring). Raises :class:`ReaderError` (pcscd away,
        no such reader, mute card) or :class:`CardRemoved` (no card)."""
        ctx = _establish()
        try:
            names = [n for n in _list_readers(ctx) if n != PNP_READER]
            found = _match(reader, names)
            if not found:
                raise ReaderError(f"no reader matching {reader!r} (readers: {names})",
                                  device=reader)
            transport = cls(ctx, found[0], reset_on_close=reset_on_close)
        except BaseException:
            scard.SCardReleaseContext(ctx)
            raise
        transport._own_ctx = ctx
        return transport

    def transmit(self, apdu: bytes) -> bytes:
        hr, resp = scard.SCardTransmit(self._card, self._proto, list(apdu))
        if hr != _OK:
            if _code(hr) == _code(scard.SCARD_W_RESET_CARD):
                raise CardWasReset("link lost: the card was reset by pcscd or another client")
            if _code(hr) in _LINK_LOST:
                raise CardRemoved(f"link lost: {scard.SCardGetErrorMessage(hr)}")
            raise ReaderError("transmit failed", device=self.reader, code=_code(hr))
        if not resp:  # a card always sends SW1 SW2; nothing at all means the link dropped
            raise CardRemoved("link lost: empty response")
        return bytes(resp)

    def close(self) -> None:
        """Disconnect (with a card reset unless ``reset_on_close`` was False) and release
        the context if :meth:`open` made it. Safe twice."""
        card, self._card = self._card, None
        if card is not None:
            scard.SCardDisconnect(card, self._disposition)
        ctx, self._own_ctx = self._own_ctx, None
        if ctx is not None:
            scard.SCardReleaseContext(ctx)


class PcscCardSource(PresentationSource):
    """SSC cards on PC/SC readers → presentations.

    ``reader``: exact reader name or a substring of it ("" = every reader but the PSAM's).
    ``psam``: a :class:`~drivers.psam.Psam`, or ``"pcsc"`` (a PSAM card in ``psam_reader``),
    ``"soft"`` (in-process, master keys from ``$YKT_PSAM_KEYS``/``$CREDENTIALS_DIRECTORY``),
    ``"test"`` (in-process with the published test keys: demos only).
    ``needs``: what the profile's rules need (subset of :data:`drivers.ssc.ALL_NEEDS`).
    ``wait_s``: the longest single ``SCardGetStatusChange`` wait (bounds stop latency if
    cancel is lost); ``retry_s``: back-off while pcscd is away.
    Raises :class:`~drivers.exceptions.ConfigError` for bad options.
    """

    name = "pcsc"

    def __init__(self, pseudonymizer: Pseudonymizer, *, reader: str = "",
                 psam: Psam | str = "pcsc", psam_reader: str = "",
                 needs: Iterable[str] = DEFAULT_NEEDS, wait_s: float = 2.0,
                 retry_s: float = 0.2) -> None:
        super().__init__()
        self.pseudonymizer = pseudonymizer
        self.reader = reader
        self.needs = check_needs(needs)
        self.psam_reader = psam_reader
        self.psam = self._make_psam(psam, psam_reader)
        self.wait_s, self.retry_s = wait_s, retry_s
        self._ctx: Any = None
        self._side_ctx: Any = None
        self.contexts_established = 0          # how often the monitor (re)connected to pcscd

    @classmethod
    def from_options(cls, options: DriverOptions, *,
                     pseudonymizer: Pseudonymizer) -> PcscCardSource:
        o = expect(options, PcscCardOptions)
        return cls(pseudonymizer, reader=o.reader, psam=o.psam, psam_reader=o.psam_reader,
                   needs=o.needs, wait_s=o.wait_s, retry_s=o.retry_s)

    @staticmethod
    def _make_psam(psam: Psam | str, psam_reader: str) -> Psam:
        if not isinstance(psam, str):
            return psam
        if psam == "pcsc":
            return PcscPsam(psam_reader)
        if psam == "soft":
            try:
                return SoftPsam(ReferenceKeys.from_environment())
            except ValueError as err:
                raise ConfigError(f"cards.pcsc: {err}") from err
        if psam == "test":
            log.warning("cards.pcsc: using the published TEST PSAM keys (demo only)")
            return SoftPsam(TEST_KEYS)
        raise ConfigError(f"cards.pcsc: psam must be 'pcsc', 'soft' or 'test', got {psam!r}")

    # -- reading ------------------------------------------------------------------------
    def read_card(self, ctx: Any, reader: str, seen_ns: int) -> Presentation:
        """Read the card now in ``reader`` on context ``ctx``; never raises for card trouble."""
        source = f"pcsc:{reader}"
        apdus = 0                      # over both attempts when the card was reset mid-read
        try:
            for attempt in (1, 2):
                transport = PcscTransport(ctx, reader)
                card = SscCard(transport)
                try:
                    data = read_ssc(card, self.psam, self.needs)
                    break
                except CardWasReset:
                    if attempt == 2:
                        raise
                    log.info("card on %s was reset during the read; reading again", reader)
                finally:
                    apdus += card.apdus
                    transport.close()
            cred = credential_from(data, self.pseudonymizer, self.psam.name)
            log.debug("card read on %s: %d APDUs, generation %s", reader, apdus, data.generation)
            return Presentation(PresentationKind.CARD, source, seen_ns, credential=cred,
                                apdus=apdus)
        except CardRemoved as err:
            log.info("card on %s removed mid-read: %s", reader, err)
            rej = Rejection(Reason.CARD_REMOVED, str(err), kind="ssc_card", journal=False)
        except CardError as err:
            log.info("card on %s refused: %s: %s", reader, err.reason.value, err)
            key = self.pseudonymizer.card_key(err.card_id) if err.card_id else ""
            rej = Rejection(err.reason, str(err), kind="ssc_card", credential_key=key)
        except PsamError as err:
            log.error("PSAM failed during a read on %s: %s", reader, err)
            rej = Rejection(Reason.INTERNAL_ERROR, f"PSAM unavailable: {err}", kind="ssc_card")
        except ReaderError as err:
            log.warning("reader error on %s: %s", reader, err)
            rej = Rejection(Reason.READ_ERROR, str(err), kind="ssc_card")
        except Exception as err:  # a bug must not stop monitoring
            log.exception("unexpected error reading a card on %s", reader)
            rej = Rejection(Reason.READ_ERROR, f"internal: {type(err).__name__}", kind="ssc_card")
        return Presentation(PresentationKind.CARD, source, seen_ns, rejection=rej, apdus=apdus)

    def read_present(self, reader: str = "") -> Presentation:
        """Read the card that is in ``reader`` now (default: the first watched reader with a
        card), on a side context; for the CLI and benchmarks. Raises :class:`ReaderError`
        if pcscd is away or no watched reader holds a card."""
        if self._side_ctx is None:
            self._side_ctx = _establish()
        names = [reader] if reader else [
            n for n, s in self._snapshot(self._side_ctx).items() if _present(s)]
        if not names:
            raise ReaderError("no card on any watched reader", device=self.reader or "*")
        return self.read_card(self._side_ctx, names[0], time.monotonic_ns())

    def _snapshot(self, ctx: Any) -> dict[str, int]:
        names = self._watched(_list_readers(ctx))
        if not names:
            return {}
        hr, result = scard.SCardGetStatusChange(
            ctx, 0, [(n, scard.SCARD_STATE_UNAWARE) for n in names])
        if hr != _OK:
            raise ReaderError("cannot read reader states", code=_code(hr))
        return {r[0]: r[1] & ~scard.SCARD_STATE_CHANGED for r in result}

    def _multiple(self, reader: str, seen_ns: int) -> Presentation:
        log.info("more than one card presented (arrival on %s)", reader)
        return Presentation(PresentationKind.CARD, f"pcsc:{reader}", seen_ns, rejection=Rejection(
            Reason.MULTIPLE_CARDS, MULTIPLE_CARDS_TEXT, kind="ssc_card"))

    def _watched(self, names: Iterable[str]) -> list[str]:
        """The card readers to watch: ``reader`` (exact name, else substring), never the PSAM's."""
        names = [n for n in names if n != PNP_READER]
        psam = _match(self.psam_reader, names) if self.psam_reader else []
        cards = _match(self.reader, names) if self.reader else names
        return [n for n in cards if n not in psam]

    # -- monitoring ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping:
            try:
                self._ctx = _establish()
                self.contexts_established += 1
                log.info("pcsc: connected to pcscd")
                self._monitor(self._ctx)
            except ReaderError as err:
                log.info("pcsc: %s; retrying in %.1f s", err, self.retry_s)
            except Exception:
                log.exception("pcsc: monitor failed; restarting")
            finally:
                ctx, self._ctx = self._ctx, None
                if ctx is not None:
                    scard.SCardReleaseContext(ctx)
            self._stop.wait(self.retry_s)

    def _monitor(self, ctx: Any) -> None:
        """Watch until pcscd goes away (raises ReaderError) or stop (returns)."""
        states: dict[str, int] = {}
        pnp = scard.SCARD_STATE_UNAWARE
        relist = True
        while not self.stopping:
            if relist:
                names = self._watched(_list_readers(ctx))
                states = {n: states.get(n, scard.SCARD_STATE_UNAWARE) for n in names}
                log.info("pcsc: watching %s", names or "no reader yet")
                relist = False
            query = [(PNP_READER, pnp), *list(states.items())]
            hr, result = scard.SCardGetStatusChange(ctx, int(self.wait_s * 1000), query)
            seen_ns = time.monotonic_ns()
            code = _code(hr)
            if code == _code(scard.SCARD_E_TIMEOUT):
                continue
            if code == _code(scard.SCARD_E_CANCELLED) or self.stopping:
                return
            if code == _code(scard.SCARD_E_UNKNOWN_READER):
                relist = True
                continue
            if hr != _OK:
                raise ReaderError("SCardGetStatusChange failed", code=code)
            arrivals = []
            for name, event, _atr in result:
                if name == PNP_READER:
                    if event & scard.SCARD_STATE_CHANGED:
                        relist = True
                    pnp = event & ~scard.SCARD_STATE_CHANGED
                    continue
                if not event & scard.SCARD_STATE_CHANGED:
                    continue
                prev, now = states[name], event & ~scard.SCARD_STATE_CHANGED
                states[name] = now
                if now & _GONE:
                    relist = True
                    continue
                if _present(now) and (not _present(prev) or (now >> 16) != (prev >> 16)):
                    arrivals.append(name)
            if arrivals:
                self._on_arrivals(ctx, arrivals, states, seen_ns)

    def _on_arrivals(self, ctx: Any, arrivals: list[str], states: dict[str, int],
                     seen_ns: int) -> None:
        holding = [n for n, s in states.items() if _present(s)]
        if len(holding) > 1:
            self.emit(self._multiple(arrivals[0], seen_ns))
            return
        presentation = self.read_card(ctx, arrivals[0], seen_ns)
        if len(states) > 1 and presentation.credential is not None:
            # another card may have entered a second field during the read
            others = [(n, scard.SCARD_STATE_UNAWARE) for n in states if n != arrivals[0]]
            hr, result = scard.SCardGetStatusChange(ctx, 0, others)
            if hr == _OK and any(_present(r[1]) for r in result):
                presentation = self._multiple(arrivals[0], seen_ns)
        self.emit(presentation)

    def _close(self) -> None:
        ctx = self._ctx
        if ctx is not None:
            scard.SCardCancel(ctx)      # wakes the monitor; it releases its own context

    def _release(self) -> None:
        # only after the monitor thread has ended: disconnecting the PSAM while that
        # thread was still in pcsc-lite calls crashed the process (SIGSEGV in
        # SCardDisconnect, seen once in a test run)
        side, self._side_ctx = self._side_ctx, None
        if side is not None:
            scard.SCardReleaseContext(side)
        self.psam.close()


def _match(pattern: str, names: list[str]) -> list[str]:
    """Readers named exactly ``pattern``, or else those containing it."""
    exact = [n for n in names if n == pattern]
    return exact or [n for n in names if pattern in n]


def _establish() -> Any:
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != _OK:
        raise ReaderError("pcscd is not running or not reachable", code=_code(hr))
    return ctx


def _list_readers(ctx: Any) -> list[str]:
    hr, names = scard.SCardListReaders(ctx, [])
    if hr == _OK:
        return list(names)
    if _code(hr) in (_code(scard.SCARD_E_NO_READERS_AVAILABLE),):
        return []
    raise ReaderError("cannot list readers", code=_code(hr))

