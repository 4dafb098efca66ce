"""SSC card data formats: status words, TLV records, the record layout, APDU exchange.

Pure parsing (fuzzed in ``tests/test_card_parsers.py``) and the T=0 exchange rules, shared by
the card application (:mod:`drivers.ssc`) and a PSAM card (:mod:`drivers.psam`).

Personal data sits in two record files, one TLV per record, the record number being the
tag (``00 B2 <tag> <SFI<<3|4> <Le>``):

========  ====  =======================================================
file      tag   field (value length in bytes, encoding)
========  ====  =======================================================
EF05 (5)  01    卡识别码 card identification code (16, binary)
          02    卡类别 card type (1)
          03    规范版本 spec version, e.g. "3.00" (4, ASCII)
          04    初始化机构编号 issuer (8, BCD; first 6 digits = region)
          05    发卡日期 issue date (4, BCD YYYYMMDD)
          06    卡有效期 expiry date (4, BCD YYYYMMDD)
          07    卡号 card number (9, ASCII)
EF06 (6)  08    社会保障号码 (18, ASCII)
          09    姓名 name (30, GBK, padded with spaces or NULs)
          0A    性别 sex (1), 0B 民族 (1), 0C 出生地 (3, BCD)
          0D    出生日期 birth date (4, BCD YYYYMMDD)
========  ====  =======================================================

T=0 cards answer ``61xx`` (fetch with GET RESPONSE) and ``6Cxx`` (resend with Le=xx);
:func:`transceive` handles both. Error messages name the record and what is wrong with
it, never a value read from the card (they reach logs, the journal and the hub). Errors
(all :class:`CardError`, each mapping to one :class:`~agent.model.Reason`)::

    CardError (DriverError)
     ├── CardRemoved          card left the field / link lost mid-read → CARD_REMOVED
     ├── NotSsc               no SSC application (foreign card)         → NOT_SSC
     ├── CardAuthFailed       internal/external authentication failed   → CARD_AUTH_FAILED
     └── CardReadError        (ValueError) unreadable card              → READ_ERROR
          ├── StatusWordError   an unexpected status word (``sw``)
          └── MalformedResponse truncated TLV, wrong length, bad encoding
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

from agent.model import Reason
from drivers.exceptions import ConfigError, DriverError
from drivers.psam import ApduTransport

__all__ = [
    "ALL_NEEDS", "DEFAULT_NEEDS", "FIELDS", "MAX_GET_RESPONSE", "CardAuthFailed", "CardError",
    "CardReadError", "CardRemoved", "FieldSpec", "MalformedResponse", "NotSsc",
    "StatusWordError", "birth_date_from_ssn", "check_needs", "decode_bcd", "decode_bcd_date",
    "decode_field", "decode_record", "decode_record_date", "decode_ssn", "decode_text",
    "decode_version", "parse_tlv", "split_sw", "sw_text", "transceive",
]

_T = TypeVar("_T")

# -- errors -------------------------------------------------------------------------------
class CardError(DriverError):
    """A card could not be turned into a credential; ``reason`` is the decision reason."""

    reason: Reason = Reason.READ_ERROR
    #: 卡识别码 (hex) if it was read before the failure, so a clone can be hotlisted
    card_id: str = ""


class CardRemoved(CardError):
    """The card left the field (or the reader link dropped) before the read finished."""

    reason = Reason.CARD_REMOVED


class NotSsc(CardError):
    """The card has no SSC application (bank card, transit card, …)."""

    reason = Reason.NOT_SSC


class CardAuthFailed(CardError):
    """The card failed internal authentication (clone) or refused external authentication."""

    reason = Reason.CARD_AUTH_FAILED


class CardReadError(CardError, ValueError):
    """The card answered, but not something we can use."""

    reason = Reason.READ_ERROR


class StatusWordError(CardReadError):
    """An unexpected status word; ``sw`` holds it."""

    def __init__(self, message: str, sw: int) -> None:
        super().__init__(message)
        self.sw = sw


class MalformedResponse(CardReadError):
    """Truncated TLV, wrong length, bad BCD/GBK/ASCII, garbage."""


SW_TEXT = {
    0x6281: "data may be corrupted", 0x6283: "file invalidated", 0x6581: "memory failure",
    0x6700: "wrong length", 0x6882: "secure messaging not supported",
    0x6982: "security status not satisfied", 0x6983: "authentication method blocked",
    0x6984: "reference data invalidated", 0x6985: "conditions of use not satisfied",
    0x6986: "command not allowed", 0x6988: "incorrect secure messaging data",
    0x6A80: "incorrect data", 0x6A81: "function not supported", 0x6A82: "file not found",
    0x6A83: "record not found", 0x6A86: "incorrect P1-P2", 0x6A88: "data not found",
    0x6D00: "instruction not supported", 0x6E00: "class not supported",
    0x6F00: "no precise diagnosis", 0x9303: "application permanently locked",
}


def sw_text(sw: int) -> str:
    """Human text for a status word (``63Cx`` included)."""
    if sw & 0xFFF0 == 0x63C0:
        return f"verification failed, {sw & 0xF} tries left"
    return SW_TEXT.get(sw, "unknown status word")


# -- record layout -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One record of EF05/EF06: its tag, file, name and value length (bytes)."""

    tag: int
    sfi: int
    label: str
    length: int

    @property
    def where(self) -> str:
        return f"EF{self.sfi:02X}/{self.tag:02X} {self.label}"


FIELDS: dict[int, FieldSpec] = {f.tag: f for f in (
    FieldSpec(0x01, 5, "卡识别码", 16), FieldSpec(0x02, 5, "卡类别", 1),
    FieldSpec(0x03, 5, "规范版本", 4), FieldSpec(0x04, 5, "初始化机构编号", 8),
    FieldSpec(0x05, 5, "发卡日期", 4), FieldSpec(0x06, 5, "卡有效期", 4),
    FieldSpec(0x07, 5, "卡号", 9), FieldSpec(0x08, 6, "社会保障号码", 18),
    FieldSpec(0x09, 6, "姓名", 30), FieldSpec(0x0A, 6, "性别", 1),
    FieldSpec(0x0B, 6, "民族", 1), FieldSpec(0x0C, 6, "出生地", 3),
    FieldSpec(0x0D, 6, "出生日期", 4),
)}

#: what a profile may ask for beyond identity (卡识别码, 社会保障号码, generation, auth).
#: 卡号 (EF05/07) is not among them: no credential field carries it (docs/card.md).
ALL_NEEDS = frozenset({"valid_until", "valid_from", "region", "birth_date", "name"})
DEFAULT_NEEDS = frozenset({"valid_until", "birth_date"})

#: GET RESPONSE rounds :func:`transceive` follows before giving up on a ``61xx`` loop
MAX_GET_RESPONSE = 16


def check_needs(needs: Iterable[str]) -> frozenset[str]:
    """``needs`` as a frozenset. Raises :class:`~drivers.exceptions.ConfigError` (a
    ``ValueError``) naming any need not in :data:`ALL_NEEDS`."""
    wanted = frozenset(needs)
    unknown = wanted - ALL_NEEDS
    if unknown:
        raise ConfigError(f"unknown card needs {sorted(unknown)}; known: {sorted(ALL_NEEDS)}")
    return wanted


# -- parsers (pure; fuzzed) ------------------------------------------------------------------
def split_sw(resp: bytes) -> tuple[bytes, int]:
    """Split a response APDU into (data, SW). Raises :class:`MalformedResponse` if < 2 bytes."""
    if len(resp) < 2:
        raise MalformedResponse(f"response of {len(resp)} bytes has no status word")
    return resp[:-2], (resp[-2] << 8) | resp[-1]


def parse_tlv(data: bytes) -> list[tuple[int, bytes]]:
    """Parse simple TLV (1-byte tag; length 1 byte, or ``81 xx`` / ``82 xx xx``).

    Raises :class:`MalformedResponse` naming the offset of a truncated tag, length or value.
    Only the first TLV's tag and length are quoted: bytes further on may be a value (a
    record whose length is short), and values never go into an error message.
    """
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(data)
    while i < n:
        start, tag = i, data[i]
        what = f"tag {tag:02X}" if start == 0 else f"TLV at offset {start}"
        if tag in (0x00, 0xFF):
            raise MalformedResponse(f"invalid TLV tag at offset {start}")
        if i + 1 >= n:
            raise MalformedResponse(f"TLV truncated: {what} has no length")
        length, i = data[i + 1], i + 2
        if length & 0x80:
            nlen = length & 0x7F
            if nlen not in (1, 2):
                raise MalformedResponse(f"TLV {what}: unsupported length form")
            if i + nlen > n:
                raise MalformedResponse(f"TLV truncated: {what} length field cut off")
            length, i = int.from_bytes(data[i:i + nlen], "big"), i + nlen
        if i + length > n:
            declared = f"declares {length} bytes, " if start == 0 else "declares more bytes, "
            raise MalformedResponse(f"TLV truncated: {what} {declared}{n - i} present")
        out.append((tag, data[i:i + length]))
        i += length
    return out


def decode_record(spec: FieldSpec, data: bytes) -> bytes:
    """The value of one record response ``data`` (TLV) for ``spec``.

    Raises :class:`MalformedResponse` for a wrong tag, several TLVs or a wrong length.
    """
    try:
        tlvs = parse_tlv(data)
    except MalformedResponse as err:
        raise MalformedResponse(f"{spec.where}: {err}") from err
    if len(tlvs) != 1:
        raise MalformedResponse(f"{spec.where}: expected 1 TLV, got {len(tlvs)}")
    tag, value = tlvs[0]
    if tag != spec.tag:
        raise MalformedResponse(f"{spec.where}: got tag {tag:02X}")
    if len(value) != spec.length:
        raise MalformedResponse(f"{spec.where}: value is {len(value)} bytes, expected {spec.length}")
    return value


def decode_bcd(value: bytes) -> str:
    """BCD digits. Raises :class:`MalformedResponse` on a nibble above 9 (naming the byte
    offset, never the value: a date of birth must not reach a log)."""
    text = value.hex()
    if not text:
        raise MalformedResponse("not BCD: empty")
    if not text.isdigit():
        bad = next(i for i, c in enumerate(text) if not c.isdigit()) // 2
        raise MalformedResponse(f"not BCD: nibble above 9 at byte {bad}")
    return text


def decode_bcd_date(value: bytes) -> date:
    """A 4-byte BCD ``YYYYMMDD`` date. Raises :class:`MalformedResponse` saying which part
    is wrong (never the digits)."""
    digits = decode_bcd(value)
    if len(digits) != 8:
        raise MalformedResponse(f"BCD date must be 4 bytes, got {len(value)}")
    year, month, day = int(digits[:4]), int(digits[4:6]), int(digits[6:])
    if year < 1:
        raise MalformedResponse("not a date: year out of range")
    if not 1 <= month <= 12:
        raise MalformedResponse("not a date: month out of range")
    try:
        return date(year, month, day)
    except ValueError:
        raise MalformedResponse("not a date: day out of range for the month") from None


def decode_text(value: bytes, encoding: str = "ascii") -> str:
    """Text padded with spaces/NULs/FF. Raises :class:`MalformedResponse` on bad encoding."""
    try:
        text = value.rstrip(b"\x00\xff ").decode(encoding)
    except UnicodeDecodeError as err:
        raise MalformedResponse(f"not {encoding} text") from err
    if not text.isprintable():
        raise MalformedResponse(f"unprintable {encoding} text")
    return text.strip()


def decode_version(value: bytes) -> str:
    """规范版本 ``"3.00"`` → generation ``"3.0"``. Raises :class:`MalformedResponse`."""
    text = decode_text(value)
    major, dot, _minor = text.partition(".")
    if not dot or major not in ("1", "2", "3"):
        raise MalformedResponse("unknown spec version (not 1.x, 2.x or 3.x)")
    return f"{major}.0"


def decode_ssn(value: bytes) -> str:
    """社会保障号码 (15–18 characters, digits and X). Raises :class:`MalformedResponse`."""
    text = decode_text(value).upper()
    if not (15 <= len(text) <= 18 and text[:-1].isdigit() and (text[-1].isdigit() or
                                                                text[-1] == "X")):
        raise MalformedResponse("社会保障号码 is not 15-18 digits")
    return text


def birth_date_from_ssn(ssn: str) -> date | None:
    """The birth date embedded in an 18-character ID-style number, if it is one."""
    if len(ssn) != 18:
        return None
    try:
        return date(int(ssn[6:10]), int(ssn[10:12]), int(ssn[12:14]))
    except ValueError:
        return None


# -- APDU exchange -------------------------------------------------------------------------
def _has_le(apdu: bytes) -> bool:
    """True for a short case 2 (``CLA INS P1 P2 Le``) or case 4 (``… Lc data Le``) command."""
    return len(apdu) == 5 or (len(apdu) > 5 and len(apdu) == 6 + apdu[4])


def transceive(transport: ApduTransport, apdu: bytes) -> tuple[bytes, int]:
    """Send ``apdu``; resend once with Le=xx on ``6Cxx`` (commands with an Le), follow
    ``61xx`` with GET RESPONSE (at most :data:`MAX_GET_RESPONSE` rounds). Used for the
    card and for a PSAM card alike.

    Returns (data, SW). Raises :class:`MalformedResponse` for a response without SW or a
    ``61xx`` that never ends; transport errors pass through.
    """
    data, sw = split_sw(transport.transmit(apdu))
    if sw >> 8 == 0x6C and _has_le(apdu):
        data, sw = split_sw(transport.transmit(apdu[:-1] + bytes([sw & 0xFF])))
    chunks = [data]
    for _ in range(MAX_GET_RESPONSE):   # bounded: a card answering 61xx forever is broken
        if sw >> 8 != 0x61:
            break
        data, sw = split_sw(transport.transmit(bytes([0x00, 0xC0, 0x00, 0x00, sw & 0xFF])))
        chunks.append(data)
    if sw >> 8 == 0x61:
        raise MalformedResponse(f"still answering 61xx after {MAX_GET_RESPONSE} GET RESPONSE")
    return b"".join(chunks), sw



def decode_record_date(tag: int, value: bytes) -> date:
    """A BCD date field, with the field named in the error."""
    return decode_field(tag, decode_bcd_date, value)


def decode_field(tag: int, decoder: Callable[[bytes], _T], value: bytes) -> _T:
    """``decoder(value)``, with the field named in a :class:`MalformedResponse`."""
    try:
        return decoder(value)
    except MalformedResponse as err:
        raise MalformedResponse(f"{FIELDS[tag].where}: {err}") from err
