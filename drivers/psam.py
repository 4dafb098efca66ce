"""PSAM (secure access module) interface and the documented SM4 reference scheme.

Real PSAM algorithms differ by province, so the card reader talks to a :class:`Psam`
protocol with two operations, and this module ships one reference scheme (documented
with its APDUs in ``docs/card.md``):

* **Key diversification.** Each card holds keys diversified from two master keys kept only
  in the PSAM: ``K_card = SM4-ECB(MK, 卡识别码)`` (the 16-byte card identification code is
  exactly one SM4 block). ``MK_IA`` for internal authentication (key reference 01),
  ``MK_EA`` for external authentication (key reference 02).
* **Internal authentication** (the card proves it is genuine): the terminal sends an
  8-byte random challenge ``R`` to the card (``00 88 00 01 08 R 10``); the card answers
  ``SM4-ECB(K_IA, R ‖ 80 00…00)`` (16 bytes, ISO/IEC 9797-1 padding method 2); the PSAM
  checks it (``80 88 00 01 28 卡识别码 ‖ R ‖ answer`` → ``9000`` or ``6988``).
* **External authentication** (the terminal proves itself before EF06 on 3.0 cards):
  ``00 84 00 00 08`` gets the card's challenge ``RC``; the PSAM computes
  ``SM4-ECB(K_EA, RC ‖ 80 00…00)`` (``80 FA 00 02 18 卡识别码 ‖ RC 10``); the terminal sends
  it with ``00 82 00 02 10 …``.

Two implementations: :class:`SoftPsam`, an in-process PSAM holding the master keys (a
real implementation of the scheme, for terminals with a software security module and for
tests), and :class:`PcscPsam`, a PSAM card in a second PC/SC reader or SAM slot (over
:class:`drivers.pcsc.PcscTransport` and :func:`drivers.ssc_records.transceive`, like the card;
pyscard is imported only when it connects).

Errors: :class:`PsamError` (PSAM missing, refusing or answering nonsense).
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agent.keys import read_secret
from drivers.exceptions import ConfigError, DeviceError, ReaderError

if TYPE_CHECKING:
    from drivers.pcsc import PcscTransport

__all__ = [
    "KEY_REF_EXTERNAL",
    "KEY_REF_INTERNAL",
    "TEST_KEYS",
    "ApduTransport",
    "PcscPsam",
    "Psam",
    "PsamError",
    "ReferenceKeys",
    "SoftPsam",
    "card_cryptogram",
    "diversify",
    "pad_block",
    "sm4_ecb",
]

log = logging.getLogger(__name__)

KEY_REF_INTERNAL = 0x01
KEY_REF_EXTERNAL = 0x02
CHALLENGE_LEN = 8
CRYPTOGRAM_LEN = 16
CARD_ID_LEN = 16


class PsamError(DeviceError):
    """The PSAM is missing, refused a command or answered nonsense (``code`` = status word)."""


class ApduTransport(Protocol):
    """Something that sends one command APDU and returns the response (data ‖ SW1 SW2)."""

    def transmit(self, apdu: bytes) -> bytes: ...


class Psam(Protocol):
    """What the card reader needs from a secure access module."""

    #: how authenticity was established, for ``Credential.authenticated_by``
    name: str

    def verify_internal(self, card_id: bytes, challenge: bytes, answer: bytes) -> bool:
        """True if ``answer`` is the genuine card's answer to ``challenge``.

        Raises :class:`PsamError` if the PSAM cannot be asked.
        """
        ...

    def external_cryptogram(self, card_id: bytes, card_challenge: bytes) -> bytes:
        """The 16-byte cryptogram that authenticates the terminal to the card.

        Raises :class:`PsamError` if the PSAM cannot be asked.
        """
        ...

    def close(self) -> None:
        """Release the PSAM. Safe twice."""
        ...


def sm4_ecb(key: bytes, block: bytes) -> bytes:
    """SM4-ECB encryption of ``block`` (a multiple of 16 bytes) under the 16-byte ``key``."""
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def pad_block(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2 (``80`` then zeros) to a multiple of 16 bytes."""
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % 16)


def diversify(master: bytes, card_id: bytes) -> bytes:
    """The card key for ``card_id`` (16-byte 卡识别码): ``SM4-ECB(master, card_id)``.

    Raises ``ValueError`` for a card id that is not 16 bytes.
    """
    if len(card_id) != CARD_ID_LEN:
        raise ValueError(f"卡识别码 must be {CARD_ID_LEN} bytes, got {len(card_id)}")
    return sm4_ecb(master, card_id)


def card_cryptogram(card_key: bytes, challenge: bytes) -> bytes:
    """What a card (or PSAM) computes for a challenge: ``SM4-ECB(key, pad(challenge))``."""
    return sm4_ecb(card_key, pad_block(challenge))


@dataclass(frozen=True, slots=True)
class ReferenceKeys:
    """The two 16-byte master keys of the reference scheme. Never logged (repr hides them)."""

    internal: bytes
    external: bytes

    def __post_init__(self) -> None:
        for label, key in (("internal", self.internal), ("external", self.external)):
            if len(key) != 16:
                raise ValueError(f"{label} master key must be 16 bytes, got {len(key)}")

    def __repr__(self) -> str:
        return "ReferenceKeys(<hidden>)"

    @classmethod
    def from_hex(cls, text: str) -> ReferenceKeys:
        """Parse ``"<32 hex internal>:<32 hex external>"``. Raises ``ValueError``."""
        a, sep, b = text.strip().partition(":")
        if not sep:
            raise ValueError("PSAM keys must be '<internal hex>:<external hex>'")
        return cls(bytes.fromhex(a), bytes.fromhex(b))

    @classmethod
    def from_environment(cls) -> ReferenceKeys:
        """Keys from ``$YKT_PSAM_KEYS`` or the file ``ykt-psam-keys`` in systemd's
        ``$CREDENTIALS_DIRECTORY`` (never from a config file).

        Raises ``ValueError`` (a :class:`~drivers.exceptions.ConfigError` upstream) if
        neither is set.
        """
        text = read_secret("ykt-psam-keys", "YKT_PSAM_KEYS")
        if not text:
            raise ValueError("no PSAM keys: set $YKT_PSAM_KEYS or the systemd credential "
                             "ykt-psam-keys, or use psam = \"pcsc\" with a PSAM reader")
        return cls.from_hex(text)


#: Published test keys of the reference scheme (virtual cards, tests, demos). Never deploy.
TEST_KEYS = ReferenceKeys(
    internal=bytes.fromhex("59 4B 54 2D 49 41 2D 54 45 53 54 2D 4B 45 59 31".replace(" ", "")),
    external=bytes.fromhex("59 4B 54 2D 45 41 2D 54 45 53 54 2D 4B 45 59 32".replace(" ", "")),
)


class SoftPsam:
    """The reference scheme computed in-process from the master keys."""

    name = "psam:sm4"

    def __init__(self, keys: ReferenceKeys) -> None:
        self._keys = keys

    def verify_internal(self, card_id: bytes, challenge: bytes, answer: bytes) -> bool:
        if len(card_id) != CARD_ID_LEN or len(answer) != CRYPTOGRAM_LEN:
            return False
        expected = card_cryptogram(diversify(self._keys.internal, card_id), challenge)
        return hmac.compare_digest(expected, answer)

    def external_cryptogram(self, card_id: bytes, card_challenge: bytes) -> bytes:
        if len(card_id) != CARD_ID_LEN:
            raise PsamError(f"卡识别码 must be {CARD_ID_LEN} bytes", device="soft")
        return card_cryptogram(diversify(self._keys.external, card_id), card_challenge)

    def close(self) -> None:
        pass


class PcscPsam:
    """A PSAM card in a PC/SC reader (``reader``: exact name, or a substring of it).

    Connects lazily, keeps the connection, and reconnects once when pcscd, the reader or
    the link went away in between. Thread-safe. Raises :class:`PsamError` when the PSAM
    cannot be reached, answers with an unexpected status word or never stops answering
    ``61xx``; :class:`~drivers.exceptions.ConfigError` for an empty ``reader``.
    """

    name = "psam:sm4"

    def __init__(self, reader: str) -> None:
        if not reader:
            raise ConfigError('psam = "pcsc" needs psam_reader (the PSAM\'s reader)')
        self.reader = reader
        self._lock = threading.Lock()
        self._conn: PcscTransport | None = None

    def verify_internal(self, card_id: bytes, challenge: bytes, answer: bytes) -> bool:
        data = card_id + challenge + answer
        _resp, sw = self._exchange(bytes([0x80, 0x88, 0x00, KEY_REF_INTERNAL, len(data)]) + data)
        if sw == 0x9000:
            return True
        if sw == 0x6988:
            return False
        raise PsamError(f"PSAM refused internal-auth check with SW {sw:04X}",
                        device=self.reader, code=sw)

    def external_cryptogram(self, card_id: bytes, card_challenge: bytes) -> bytes:
        data = card_id + card_challenge
        resp, sw = self._exchange(bytes([0x80, 0xFA, 0x00, KEY_REF_EXTERNAL, len(data)]) + data
                                  + bytes([CRYPTOGRAM_LEN]))
        if sw != 0x9000 or len(resp) != CRYPTOGRAM_LEN:
            raise PsamError(f"PSAM gave no external-auth cryptogram (SW {sw:04X}, "
                            f"{len(resp)} bytes)", device=self.reader, code=sw)
        return resp

    def _exchange(self, apdu: bytes) -> tuple[bytes, int]:
        """(data, SW) of ``apdu`` (``61xx``/``6Cxx`` followed as for the card)."""
        from drivers.pcsc import PcscTransport  # pyscard only once a PSAM card is used
        from drivers.ssc_records import CardReadError, CardRemoved, transceive

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = PcscTransport.open(self.reader, reset_on_close=False)
                    return transceive(self._conn, apdu)
                except (CardRemoved, ReaderError) as err:   # pcscd, reader or link gone
                    self._drop()
                    if attempt == 2:
                        raise PsamError(f"PSAM not reachable: {_text(err)}", device=self.reader,
                                        code=getattr(err, "code", None)) from err
                    log.info("PSAM %s: reconnecting after %s", self.reader, err)
                except CardReadError as err:                # no SW, endless 61xx
                    self._drop()
                    raise PsamError(f"PSAM answered nonsense: {err}", device=self.reader) from err
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def _text(err: Exception) -> str:
    """An error's own message (without the device/code suffix a DeviceError adds)."""
    return str(err.args[0]) if err.args else type(err).__name__
