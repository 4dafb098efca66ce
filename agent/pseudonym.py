"""Keyed hashes for identifiers, and masked display of personal data.

Raw 社会保障号码 (social security numbers), card numbers and names never reach the store,
the journal, logs or the wire. Everything that must identify a person or a card is a keyed
hash (HMAC-SHA256 with the deployment's pseudonymisation key, truncated to 128 bits, hex),
so the hub can compute the same key from its source data and nobody without the key can
reverse or link it. See ``docs/model.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from agent.errors import ConfigurationError

__all__ = ["Pseudonymizer", "mask_code", "mask_id", "mask_name"]

_KEY_BYTES = 16  # 128-bit keyed hashes: collision-free at city scale, short on the wire


class Pseudonymizer:
    """Turns identifiers into keyed hashes.

    ``key`` is the deployment's secret pseudonymisation key (at least 16 bytes).
    Raises :class:`agent.errors.ConfigurationError` (a ``ValueError``) for a short key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigurationError("pseudonymisation key must be at least 16 bytes")
        self._key = key

    def key(self, namespace: str, identifier: str) -> str:
        """Keyed hash of ``identifier`` in ``namespace`` (e.g. "holder", "card"), 32 hex chars."""
        if not identifier:
            raise ValueError(f"empty identifier for namespace {namespace!r}")
        msg = f"ykt1|{namespace}|{identifier.strip().upper()}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_KEY_BYTES].hex()

    def holder_key(self, ssn: str) -> str:
        """Holder key from the 18-character 社会保障号码 (same person across cards and codes)."""
        return self.key("holder", ssn)

    def card_key(self, card_identifier: str) -> str:
        """Credential key of a physical card from its 卡识别码 (card identification code)."""
        return self.key("card", card_identifier)


def mask_id(ssn: str) -> str:
    """Masked display of an ID number: first 4 and last 4 kept, e.g. ``3701**********1234``."""
    s = ssn.strip()
    if len(s) <= 8:
        return "*" * len(s)
    return s[:4] + "*" * (len(s) - 8) + s[-4:]


def mask_name(name: str) -> str:
    """Masked display of a name: the family name kept, e.g. ``张*`` (``欧阳**`` stays ``欧**``)."""
    n = name.strip()
    if not n:
        return ""
    return n[0] + "*" * max(1, len(n) - 1)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,11}:")


def mask_code(text: str) -> str:
    """Loggable stand-in for a scanned code text: its scheme and length, nothing else.

    The scheme is the text's prefix up to and including the first ``:`` when it looks like
    one (an ASCII letter, then at most 11 letters, digits, ``+``, ``-`` or ``.``), e.g.
    ``YKT1:…(452 chars)`` or ``https:…(40 chars)``; any other text (an ID-card barcode, a
    phone number) shows only its length: ``…(18 chars)``. None of the payload's characters
    are ever included.
    """
    m = _SCHEME.match(text)
    return f"{m.group(0) if m else ''}…({len(text)} chars)"
