"""COSE_Sign1 (RFC 9052 §4.2) encoding and strict decoding, over ``cbor2``.

Only what the ``YKT1:`` scheme needs: a single signer, no external AAD, the protected
header a bstr-wrapped map. Decoding accepts the message with or without CBOR tag 18.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.codes.algorithms import SignatureAlgorithm
from agent.errors import YktError

__all__ = [
    "HDR_ALG",
    "HDR_KCWT",
    "HDR_KID",
    "COSE_SIGN1_TAG",
    "CoseError",
    "Sign1",
    "decode_sign1",
    "encode_sign1",
    "loads_strict",
    "sig_structure",
]

_MAX_DEPTH = 16
COSE_SIGN1_TAG = 18
HDR_ALG = 1
HDR_KID = 4
HDR_KCWT = 13
"""Header parameter carrying a CWT with a ``cnf`` key (RFC 9528 §10.6)."""


class CoseError(YktError, ValueError):
    """The bytes are not a well-formed COSE_Sign1. ``code`` is a short stable token."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Sign1:
    """A decoded COSE_Sign1; ``protected_raw`` are the exact bytes that were signed."""

    protected: Mapping[Any, Any]
    protected_raw: bytes
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        """The Sig_structure bytes whose signature is :attr:`signature`."""
        return sig_structure(self.protected_raw, self.payload)


def sig_structure(protected_raw: bytes, payload: bytes) -> bytes:
    """``Sig_structure`` for COSE_Sign1 with empty external AAD (RFC 9052 §4.4)."""
    return cbor2.dumps(["Signature1", protected_raw, b"", payload])


def loads_strict(data: bytes) -> Any:
    """``cbor2.loads`` that raises :class:`CoseError` (``bad_cbor``) on any failure,
    including trailing bytes, and never anything else."""
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, max_depth=_MAX_DEPTH, allow_duplicate_keys=False,
                                  allow_indefinite=False).decode()
    except Exception as err:  # cbor2 raises assorted types for hostile input
        raise CoseError("bad_cbor", f"not CBOR: {type(err).__name__}") from None
    if fp.tell() != len(data):
        raise CoseError("bad_cbor", f"{len(data) - fp.tell()} trailing bytes after CBOR item")
    return value


def encode_sign1(alg: SignatureAlgorithm, private_key: Any, protected: Mapping[int, Any],
                 payload: bytes, *, tagged: bool = True) -> bytes:
    """Sign ``payload`` and return the encoded COSE_Sign1 (``protected`` gets ``alg``)."""
    hdr = {HDR_ALG: alg.cose_id, **protected}
    protected_raw = cbor2.dumps(hdr)
    sig = alg.sign(private_key, sig_structure(protected_raw, payload))
    msg: Any = [protected_raw, {}, payload, sig]
    if tagged:
        msg = cbor2.CBORTag(COSE_SIGN1_TAG, msg)
    return cbor2.dumps(msg)


def decode_sign1(data: bytes) -> Sign1:
    """Decode a COSE_Sign1 message. Raises :class:`CoseError` with code ``bad_cbor``
    (not CBOR) or ``bad_cose`` (CBOR, but not a COSE_Sign1)."""
    obj = loads_strict(data)
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise CoseError("bad_cose", f"CBOR tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise CoseError("bad_cose", "COSE_Sign1 must be an array of 4")
    protected_raw, unprotected, payload, signature = obj
    if not (isinstance(protected_raw, bytes) and isinstance(unprotected, Mapping)
            and isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise CoseError("bad_cose", "COSE_Sign1 members have the wrong types")
    if protected_raw:
        protected = loads_strict(protected_raw)
        if not isinstance(protected, Mapping):
            raise CoseError("bad_cose", "protected header is not a map")
    else:
        protected = {}
    return Sign1(protected, protected_raw, unprotected, payload, signature)
