"""Base45 (RFC 9285): binary data as QR-alphanumeric text.

QR codes store the 45-character alphanumeric set at 5.5 bits a character, so Base45 of a
payload makes a smaller code than Base64 in byte mode. Two bytes become three characters,
a trailing single byte two.
"""

from __future__ import annotations

from agent.errors import YktError

__all__ = ["ALPHABET", "Base45Error", "b45decode", "b45encode"]

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


class Base45Error(YktError, ValueError):
    """The text is not valid Base45 (bad character, bad length, value out of range)."""


def b45encode(data: bytes) -> str:
    """Base45 text of ``data``."""
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        e, n = divmod(n, 45 * 45)
        d, c = divmod(n, 45)
        out += (ALPHABET[c], ALPHABET[d], ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += (ALPHABET[c], ALPHABET[d])
    return "".join(out)


def b45decode(text: str) -> bytes:
    """The bytes encoded by Base45 ``text``.

    Raises :class:`Base45Error` for a character outside the alphabet, a length that leaves
    a single character (``len % 3 == 1``), or a group whose value exceeds its byte range.
    """
    try:
        vals = [_INDEX[c] for c in text]
    except KeyError as err:
        raise Base45Error(f"character {err.args[0]!r} is not in the Base45 alphabet") from None
    if len(vals) % 3 == 1:
        raise Base45Error(f"length {len(vals)} is not a valid Base45 length")
    out = bytearray()
    full = len(vals) - len(vals) % 3
    for i in range(0, full, 3):
        n = vals[i] + vals[i + 1] * 45 + vals[i + 2] * 2025
        if n > 0xFFFF:
            raise Base45Error(f"group at {i} encodes {n}, more than two bytes")
        out += bytes((n >> 8, n & 0xFF))
    if full != len(vals):
        n = vals[full] + vals[full + 1] * 45
        if n > 0xFF:
            raise Base45Error(f"final group encodes {n}, more than one byte")
        out.append(n)
    return bytes(out)
