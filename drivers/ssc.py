"""The social security card (SSC) application: select, authenticate, read what is needed.

The card application is selected by AID ``7378312E73682EC9E7BBE1B1A3D5CF`` ("sx1.sh." +
GBK 社会保障). 3.0 cards release EF06 only after external authentication (see
:mod:`drivers.psam`). The record layout, TLV and status-word parsing, the T=0 exchange and
the :class:`CardError` tree are in :mod:`drivers.ssc_records` (re-exported here).

Which records a tap reads depends on the profile's ``needs`` (see :func:`read_ssc` and
``docs/card.md``); :func:`credential_from` turns a read into the credential (keyed hashes
and masked strings).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

from agent.model import Credential
from agent.pseudonym import Pseudonymizer, mask_id, mask_name
from drivers.psam import (
    CHALLENGE_LEN,
    CRYPTOGRAM_LEN,
    KEY_REF_EXTERNAL,
    KEY_REF_INTERNAL,
    ApduTransport,
    Psam,
)
from drivers.ssc_records import (
    ALL_NEEDS,
    DEFAULT_NEEDS,
    FIELDS,
    MAX_GET_RESPONSE,
    CardAuthFailed,
    CardError,
    CardReadError,
    CardRemoved,
    FieldSpec,
    MalformedResponse,
    NotSsc,
    StatusWordError,
    birth_date_from_ssn,
    check_needs,
    decode_bcd,
    decode_bcd_date,
    decode_field,
    decode_record,
    decode_record_date,
    decode_ssn,
    decode_text,
    decode_version,
    parse_tlv,
    split_sw,
    sw_text,
    transceive,
)

__all__ = [
    "AID", "ALL_NEEDS", "DEFAULT_NEEDS", "FIELDS", "MAX_GET_RESPONSE", "CardAuthFailed",
    "CardError", "CardReadError", "CardRemoved", "FieldSpec", "MalformedResponse", "NotSsc",
    "SscCard", "SscData", "StatusWordError", "check_needs", "credential_from",
    "decode_bcd_date", "decode_record", "parse_tlv", "read_ssc", "split_sw", "transceive",
]

log = logging.getLogger(__name__)

AID = bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF")


class _Counted:
    """A transport that counts the APDUs sent through it (failed ones included)."""

    def __init__(self, transport: ApduTransport) -> None:
        self.transport = transport
        self.sent = 0

    def transmit(self, apdu: bytes) -> bytes:
        self.sent += 1
        return self.transport.transmit(apdu)


# -- the card ----------------------------------------------------------------------------
class SscCard:
    """The SSC application on one connected card (``transport`` sends raw APDUs).

    ``apdus`` counts every command sent, GET RESPONSE and 6Cxx retries included.
    Transport errors pass through (a PC/SC transport raises :class:`CardRemoved`).
    """

    def __init__(self, transport: ApduTransport) -> None:
        self._t = _Counted(transport)

    @property
    def apdus(self) -> int:
        return self._t.sent

    def command(self, apdu: bytes) -> tuple[bytes, int]:
        """Send ``apdu`` with :func:`transceive`. Returns (data, SW).

        Raises :class:`MalformedResponse` for a response without SW or an endless ``61xx``.
        """
        return transceive(self._t, apdu)

    def select(self) -> None:
        """Select the SSC application. Raises :class:`NotSsc` or :class:`StatusWordError`."""
        _data, sw = self.command(bytes([0x00, 0xA4, 0x04, 0x0C, len(AID)]) + AID)
        if sw == 0x9000:
            return
        if sw in (0x6A82, 0x6A81, 0x6A86, 0x6D00, 0x6E00, 0x6999, 0x6A87):
            raise NotSsc(f"no SSC application (SELECT answered {sw:04X} {sw_text(sw)})")
        raise StatusWordError(f"SELECT SSC application: SW {sw:04X} {sw_text(sw)}", sw)

    def read_field(self, tag: int) -> bytes:
        """Read one record (its value). Raises :class:`StatusWordError`/:class:`MalformedResponse`.

        A ``6982`` on EF06 means external authentication is missing.
        """
        spec = FIELDS[tag]
        le = (spec.length + 2) & 0xFF
        data, sw = self.command(bytes([0x00, 0xB2, tag, (spec.sfi << 3) | 4, le]))
        if sw != 0x9000:
            raise StatusWordError(f"{spec.where}: SW {sw:04X} {sw_text(sw)}", sw)
        return decode_record(spec, data)

    def internal_authenticate(self, challenge: bytes) -> bytes:
        """The card's 16-byte answer to ``challenge``. Raises :class:`CardAuthFailed` on a
        refusal, :class:`MalformedResponse` on a wrong-length answer."""
        data, sw = self.command(bytes([0x00, 0x88, 0x00, KEY_REF_INTERNAL, len(challenge)])
                                + challenge + bytes([CRYPTOGRAM_LEN]))
        if sw != 0x9000:
            raise CardAuthFailed(f"INTERNAL AUTHENTICATE refused: SW {sw:04X} {sw_text(sw)}")
        if len(data) != CRYPTOGRAM_LEN:
            raise MalformedResponse(f"INTERNAL AUTHENTICATE answered {len(data)} bytes, "
                                    f"expected {CRYPTOGRAM_LEN}")
        return data

    def get_challenge(self) -> bytes:
        """An 8-byte card challenge. Raises :class:`StatusWordError`/:class:`MalformedResponse`."""
        data, sw = self.command(bytes([0x00, 0x84, 0x00, 0x00, CHALLENGE_LEN]))
        if sw != 0x9000:
            raise StatusWordError(f"GET CHALLENGE: SW {sw:04X} {sw_text(sw)}", sw)
        if len(data) != CHALLENGE_LEN:
            raise MalformedResponse(f"GET CHALLENGE answered {len(data)} bytes")
        return data

    def external_authenticate(self, cryptogram: bytes) -> None:
        """Authenticate the terminal. Raises :class:`CardAuthFailed` if the card refuses."""
        _data, sw = self.command(bytes([0x00, 0x82, 0x00, KEY_REF_EXTERNAL, len(cryptogram)])
                                 + cryptogram)
        if sw != 0x9000:
            raise CardAuthFailed(f"EXTERNAL AUTHENTICATE refused: SW {sw:04X} {sw_text(sw)}")


@dataclass(frozen=True, slots=True)
class SscData:
    """What was read from one card. Holds personal data: never log it (repr is masked)."""

    card_id: str                          # 卡识别码, 32 hex chars upper case
    ssn: str
    generation: str
    valid_from: date | None = None
    valid_until: date | None = None
    region: str = ""
    birth_date: date | None = None
    name: str = ""
    apdus: int = 0

    def __repr__(self) -> str:
        return f"SscData(generation={self.generation!r}, apdus={self.apdus})"


def credential_from(data: SscData, pseudonymizer: Pseudonymizer, authenticated_by: str) -> Credential:
    """The credential for a card read: keyed hashes, claims and masked display strings."""
    return Credential(
        kind="ssc_card", credential_key=pseudonymizer.card_key(data.card_id),
        holder_key=pseudonymizer.holder_key(data.ssn), region=data.region,
        generation=data.generation, valid_from=data.valid_from, valid_until=data.valid_until,
        birth_date=data.birth_date, authenticated_by=authenticated_by,
        masked_id=mask_id(data.ssn), masked_name=mask_name(data.name),
    )


def read_ssc(card: SscCard, psam: Psam, needs: Iterable[str] = DEFAULT_NEEDS, *,
             random: Callable[[int], bytes] = os.urandom) -> SscData:
    """Select, authenticate and read the records ``needs`` asks for, in the fewest APDUs.

    Always: SELECT, 卡识别码 (01), 规范版本 (03), INTERNAL AUTHENTICATE (checked by the
    PSAM), 社会保障号码 (08; after GET CHALLENGE + EXTERNAL AUTHENTICATE on 3.0 cards).
    Then per need: ``valid_until`` 06, ``valid_from`` 05, ``region`` 04, ``name`` 09,
    ``birth_date`` from the 社会保障号码 (0D only if it has no date in it).

    Raises a :class:`CardError` subclass (``PsamError`` if the PSAM fails),
    :class:`~drivers.exceptions.ConfigError` for unknown ``needs``.
    """
    wanted = check_needs(needs)
    card.select()
    card_id = card.read_field(0x01)
    try:
        return _read_identified(card, psam, wanted, card_id, random)
    except CardError as err:
        err.card_id = card_id.hex().upper()
        raise


def _read_identified(card: SscCard, psam: Psam, wanted: frozenset[str], card_id: bytes,
                     random: Callable[[int], bytes]) -> SscData:
    generation = decode_version(card.read_field(0x03))
    challenge = random(CHALLENGE_LEN)
    answer = card.internal_authenticate(challenge)
    if not psam.verify_internal(card_id, challenge, answer):
        raise CardAuthFailed("internal authentication failed: card answer does not match "
                             "its 卡识别码 (cloned card?)")
    if generation == "3.0":
        card.external_authenticate(psam.external_cryptogram(card_id, card.get_challenge()))
    ssn = decode_ssn(card.read_field(0x08))
    values: dict[str, object] = {}
    if "valid_until" in wanted:
        values["valid_until"] = decode_record_date(0x06, card.read_field(0x06))
    if "valid_from" in wanted:
        values["valid_from"] = decode_record_date(0x05, card.read_field(0x05))
    if "region" in wanted:
        values["region"] = decode_field(0x04, lambda v: decode_bcd(v)[:6], card.read_field(0x04))
    if "name" in wanted:
        values["name"] = decode_field(0x09, lambda v: decode_text(v, "gbk"),
                                      card.read_field(0x09))
    if "birth_date" in wanted:
        values["birth_date"] = (birth_date_from_ssn(ssn)
                                or decode_record_date(0x0D, card.read_field(0x0D)))
    return SscData(card_id=card_id.hex().upper(), ssn=ssn, generation=generation,
                   apdus=card.apdus, **values)  # type: ignore[arg-type]
