"""Virtual SSC cards and a virtual PSAM behind the real PC/SC stack (vsmartcard ``vpcd``).

vpcd (a pcscd reader driver) listens on a TCP port per reader slot (35963, 35964, … from
``/etc/reader.conf.d/vpcd``). A virtual card *is in the field* while it holds a TCP
connection to that port: connecting inserts it, closing removes it. Every message either
way is a 2-byte big-endian length then the payload; a 1-byte payload from vpcd is a
control code (00 power off, 01 power on, 02 reset, 04 send ATR), anything longer is a
command APDU to answer. Sockets use TCP_NODELAY (otherwise each APDU costs ~40 ms).

* :class:`VirtualSscCard` — an SSC card built from a :class:`~simulator.population.CardHolder`
  (generation 1.0/2.0 behave as T=0 cards: ``61xx``/``6Cxx``); flags for a cloned card
  (wrong keys), damaged records (``6581``), raw response overrides (malformed answers) and
  ``pull_after`` (the card leaves the field after that many APDUs).
* :class:`ForeignCard` — an EMV-like bank card with no SSC application.
* :class:`VirtualPsam` — the reference-scheme PSAM (:mod:`drivers.psam`) as a card.
* :class:`VpcdSlot` — one vpcd reader slot: ``insert(card)``, ``remove()``; reconnects by
  itself when pcscd restarts.

Population tags understood by :func:`card_for`: ``cloned``, ``damaged``, ``gen1``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from datetime import date
from typing import Protocol

from agent.errors import YktError
from drivers.psam import (
    KEY_REF_EXTERNAL,
    KEY_REF_INTERNAL,
    TEST_KEYS,
    ReferenceKeys,
    SoftPsam,
    card_cryptogram,
    diversify,
)
from drivers.ssc import AID, FIELDS
from simulator.population import CardHolder, Population

__all__ = [
    "CardPulled",
    "ForeignCard",
    "VirtualCard",
    "VirtualPsam",
    "VirtualSscCard",
    "VpcdSlot",
    "card_for",
    "card_population",
]

log = logging.getLogger(__name__)


class CardPulled(YktError):
    """Raised by a virtual card to leave the field now (the slot drops the connection)."""


class VirtualCard(Protocol):
    """A card a :class:`VpcdSlot` can hold."""

    atr: bytes

    def reset(self) -> None: ...

    def apdu(self, command: bytes) -> bytes: ...


def _atr(historical: bytes, *, t1: bool) -> bytes:
    """A well-formed ATR offering T=0 (or T=0 and T=1, with its check byte)."""
    if not t1:
        return bytes([0x3B, len(historical)]) + historical
    body = bytes([0x80 | len(historical), 0x80, 0x01]) + historical
    tck = 0
    for b in body:
        tck ^= b
    return b"\x3b" + body + bytes([tck])


def _bcd(digits: str) -> bytes:
    return bytes.fromhex(digits)


def _sw(sw: int) -> bytes:
    return sw.to_bytes(2, "big")


class VirtualSscCard:
    """A social security card for ``holder``.

    ``keys``: the master keys its card keys are diversified from (``cloned`` uses others).
    ``damaged``: tags whose records answer ``6581`` (memory failure).
    ``responses``: tag (or ``"select"``, ``"internal"``) → raw response bytes to send instead.
    ``pull_after``: leave the field when APDU number ``pull_after + 1`` arrives.
    """

    def __init__(self, holder: CardHolder, keys: ReferenceKeys = TEST_KEYS, *,
                 cloned: bool = False, damaged: frozenset[int] = frozenset(),
                 responses: Mapping[int | str, bytes] | None = None,
                 pull_after: int | None = None, generation: str | None = None) -> None:
        self.holder = holder
        self.generation = generation or holder.generation
        self.t0 = self.generation != "3.0"
        self.card_id = bytes.fromhex(holder.card_id)
        if cloned:  # the attacker copied the data but cannot extract the keys
            keys = ReferenceKeys(os.urandom(16), os.urandom(16))
        self._k_ia = diversify(keys.internal, self.card_id)
        self._k_ea = diversify(keys.external, self.card_id)
        self.damaged, self.responses = damaged, dict(responses or {})
        self.pull_after = pull_after
        self.apdus_seen = 0
        self.atr = _atr(b"SSC" + self.generation.encode() + b"0", t1=not self.t0)
        self.records = self._records(holder)
        self.reset()

    def _records(self, h: CardHolder) -> dict[int, bytes]:
        name = h.name.encode("gbk")[:30].ljust(30, b" ")
        major = self.generation.split(".")[0]
        values = {
            0x01: self.card_id, 0x02: b"3", 0x03: f"{major}.00".encode(),
            0x04: _bcd(h.region + "0000000000"), 0x05: _bcd(f"{h.issued:%Y%m%d}"),
            0x06: _bcd(f"{h.expires:%Y%m%d}"), 0x07: h.card_no.encode().ljust(9)[:9],
            0x08: h.ssn.encode().ljust(18), 0x09: name,   # 15-digit (old) numbers: padded
            0x0A: b"1" if int(h.ssn[16 if len(h.ssn) == 18 else 14]) % 2 else b"2",
            0x0B: b"\x01", 0x0C: _bcd(h.region[:6]), 0x0D: _bcd(f"{h.birth_date:%Y%m%d}"),
        }
        return {t: bytes([t, len(v)]) + v for t, v in values.items()}

    def reset(self) -> None:
        self._selected = False
        self._ext_ok = False
        self._challenge: bytes | None = None
        self._pending = b""

    def apdu(self, command: bytes) -> bytes:
        self.apdus_seen += 1
        if self.pull_after is not None and self.apdus_seen > self.pull_after:
            raise CardPulled
        if len(command) < 4:
            return _sw(0x6700)
        cla, ins, p1, p2 = command[:4]
        body = command[5:] if len(command) > 5 else b""
        le = command[-1] if len(command) > 4 and len(command) in (5, 6 + command[4]) else None
        if ins == 0xA4:
            return self.responses.get("select") or self._select(body)
        if not self._selected and ins != 0xC0:
            return _sw(0x6985)
        if ins == 0xB2:
            return self._read(p1, p2, le or 0)
        if ins == 0x88:
            return self.responses.get("internal") or self._out(
                card_cryptogram(self._k_ia, body[:8]))
        if ins == 0x84:
            self._challenge = os.urandom(8)
            return self._challenge + _sw(0x9000)
        if ins == 0x82:
            ok = self._challenge is not None and body == card_cryptogram(self._k_ea, self._challenge)
            self._challenge = None
            self._ext_ok = ok
            return _sw(0x9000 if ok else 0x63C2)
        if ins == 0xC0:
            data, self._pending = self._pending, b""
            return data + _sw(0x9000) if data else _sw(0x6985)
        return _sw(0x6D00)

    def _select(self, body: bytes) -> bytes:
        self._selected = body == AID
        return _sw(0x9000 if self._selected else 0x6A82)

    def _out(self, data: bytes) -> bytes:
        if self.t0:                      # T=0 case 4: the data waits for GET RESPONSE
            self._pending = data
            return _sw(0x6100 | len(data))
        return data + _sw(0x9000)

    def _read(self, tag: int, p2: int, le: int) -> bytes:
        spec = FIELDS.get(tag)
        if spec is None or p2 != (spec.sfi << 3) | 4:
            return _sw(0x6A83)
        if tag in self.responses:
            return self.responses[tag]
        if tag in self.damaged:
            return _sw(0x6581)
        if spec.sfi == 6 and self.generation == "3.0" and not self._ext_ok:
            return _sw(0x6982)
        rec = self.records[tag]
        if le != len(rec) and (self.t0 or le != 0):
            return _sw(0x6C00 | len(rec))
        return rec + _sw(0x9000)


class ForeignCard:
    """An EMV-like bank card: a PPSE and a payment application, no SSC application."""

    atr = _atr(b"EMV-BANK", t1=True)

    def reset(self) -> None:
        pass

    def apdu(self, command: bytes) -> bytes:
        if command[1:2] == b"\xa4" and b"2PAY.SYS.DDF01" in command:
            fci = b"\x6f\x10\x84\x0e2PAY.SYS.DDF01"
            return fci + _sw(0x9000)
        if command[1:2] == b"\xa4":
            return _sw(0x6A82)
        return _sw(0x6D00)


class VirtualPsam:
    """The reference-scheme PSAM as a card (see :mod:`drivers.psam` for the APDUs).

    P2 must be the scheme's key reference (01 internal, 02 external), else ``6A86``.
    """

    def __init__(self, keys: ReferenceKeys = TEST_KEYS) -> None:
        self._soft = SoftPsam(keys)
        self.atr = _atr(b"YKT-PSAM", t1=True)
        self.apdus_seen = 0

    def reset(self) -> None:
        pass

    def apdu(self, command: bytes) -> bytes:
        self.apdus_seen += 1
        if len(command) < 5:
            return _sw(0x6700)
        cla, ins, _p1, p2, lc = command[:5]
        data = command[5:5 + lc]
        if cla == 0x80 and ins == 0x88:
            if p2 != KEY_REF_INTERNAL:
                return _sw(0x6A86)
            if lc != 40 or len(data) != 40:
                return _sw(0x6700)
            ok = self._soft.verify_internal(data[:16], data[16:24], data[24:40])
            return _sw(0x9000 if ok else 0x6988)
        if cla == 0x80 and ins == 0xFA:
            if p2 != KEY_REF_EXTERNAL:
                return _sw(0x6A86)
            if lc != 24 or len(data) != 24:
                return _sw(0x6700)
            return self._soft.external_cryptogram(data[:16], data[16:24]) + _sw(0x9000)
        return _sw(0x6D00)


class VpcdSlot:
    """One vpcd reader slot at ``host:port`` and the card (if any) in its field.

    After a card leaves, the field stays empty for at least ``min_absent_s`` seconds (more
    than pcscd's 400 ms presence poll), as a real card taken out and tapped again would:
    otherwise vpcd could accept the next card before pcscd ever saw the field empty.

    A background thread keeps a connection open while a card is inserted, answering
    vpcd's control codes and APDUs; it reconnects when vpcd goes away (pcscd restart).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", *, name: str = "",
                 min_absent_s: float = 0.45) -> None:
        self.port, self.host, self.name = port, host, name or f"vpcd:{port}"
        self.min_absent_s = min_absent_s
        self._empty_since = 0.0
        self._card: VirtualCard | None = None
        self._sock: socket.socket | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"vpcd-{port}", daemon=True)
        self._thread.start()

    def insert(self, card: VirtualCard) -> None:
        """Put ``card`` in the field (replacing any card there)."""
        with self._cond:
            self._drop()
            self._card = card
            self._cond.notify_all()

    def remove(self) -> None:
        """Take the card out of the field. Safe when empty."""
        with self._cond:
            self._card = None
            self._drop()
            self._cond.notify_all()

    def close(self) -> None:
        """Remove the card and stop the thread. Safe twice."""
        with self._cond:
            self._closed = True
        self.remove()
        self._thread.join(2.0)

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._empty_since = time.monotonic()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._card is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                card: VirtualCard | None = self._card
                wait = self._empty_since + self.min_absent_s - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
            except OSError:
                with self._cond:
                    self._cond.wait(0.05)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            with self._cond:
                if self._card is not card or self._closed:
                    sock.close()
                    continue
                self._sock = sock
            assert card is not None
            try:
                self._serve(sock, card)
            except CardPulled:
                log.debug("%s: card pulled mid-read", self.name)
                with self._cond:
                    if self._card is card:
                        self._card = None
                    self._drop()
            except OSError:
                pass
            with self._cond:
                if self._sock is sock:
                    self._drop()

    def _serve(self, sock: socket.socket, card: VirtualCard) -> None:
        while True:
            head = _recv_exact(sock, 2)
            if head is None:
                return
            (size,) = struct.unpack(">H", head)
            msg = _recv_exact(sock, size)
            if msg is None:
                return
            if size == 1:
                code = msg[0]
                if code == 0x04:
                    sock.sendall(struct.pack(">H", len(card.atr)) + card.atr)
                elif code in (0x01, 0x02):
                    card.reset()
                continue
            resp = card.apdu(msg)
            sock.sendall(struct.pack(">H", len(resp)) + resp)


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Read exactly ``n`` bytes (None at EOF). vpcd writes the length and the APDU in two
    sends, so with Nagle on its side our delayed ACK would hold the APDU back ~40 ms:
    TCP_QUICKACK (Linux; it resets itself, hence every time) acknowledges at once."""
    buf = b""
    while len(buf) < n:
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def card_for(holder: CardHolder, keys: ReferenceKeys = TEST_KEYS, **flags: object) -> VirtualSscCard:
    """The virtual card of ``holder``, honouring its tags (``cloned``, ``damaged``, ``gen1``).

    ``flags`` are passed to :class:`VirtualSscCard` (e.g. ``pull_after=3``).
    """
    opts: dict[str, object] = {"cloned": "cloned" in holder.tags}
    if "damaged" in holder.tags:
        opts["damaged"] = frozenset({0x06})
    if "gen1" in holder.tags:
        opts["generation"] = "1.0"
    opts.update(flags)
    return VirtualSscCard(holder, keys, **opts)  # type: ignore[arg-type]


def card_population(size: int = 20, *, seed: int = 7, today: date | None = None) -> Population:
    """:meth:`Population.generate` plus the cards the card tests need: a cloned card, a card
    with a damaged expiry record and a first-generation (1.0, T=0) card."""
    pop = Population.generate(size, seed=seed, today=today)
    base = pop.holders[:3]
    extra = [
        dataclasses.replace(base[0], tags=("cloned",)),   # same 卡识别码, keys unknown
        dataclasses.replace(base[1], card_id=_flip(base[1].card_id, 2), tags=("damaged",)),
        dataclasses.replace(base[2], card_id=_flip(base[2].card_id, 3), generation="1.0",
                            tags=("gen1",)),
    ]
    return Population(pop.holders + extra)


def _flip(card_id: str, n: int = 1) -> str:
    """A different (deterministic) 卡识别码 for a derived card."""
    raw = bytearray(bytes.fromhex(card_id))
    raw[-1] ^= n
    return raw.hex().upper()
