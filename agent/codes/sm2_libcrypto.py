"""SM2-with-SM3 signature *verification* through the system's libcrypto (OpenSSL ≥ 3.0).

Terminals only verify SM2 (phones and issuers sign). ``tongsuopy`` has no wheels for
aarch64 (Raspberry Pi OS 64-bit), so there the 国密 path would silently vanish; Debian 12's
and Raspberry Pi OS's OpenSSL 3.0 implement SM2 and SM3, and ``ctypes`` reaches them
without a compiler. This backend verifies (GB/T 32918 with the default user id
``1234567812345678``, GB/T 35276) and loads public keys; signing and key generation stay
tongsuopy's. :func:`available` says whether the library here has SM2.

Keys are SubjectPublicKeyInfo DER bytes (:class:`Sm2PublicKey`): they are parsed by
libcrypto at each verification, which costs about what the signature check costs.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
from dataclasses import dataclass
from typing import Any

__all__ = ["Sm2PublicKey", "available", "load_public_der", "public_key_from_point",
           "verifier_class", "verify"]

SM2_DEFAULT_ID = b"1234567812345678"
# AlgorithmIdentifier { id-ecPublicKey, curve sm2p256v1 (1.2.156.10197.1.301) }
_SPKI_ALG = bytes.fromhex("301306072a8648ce3d020106082a811ccf5501822d")


@dataclass(frozen=True)
class Sm2PublicKey:
    """An SM2 public key as SubjectPublicKeyInfo DER."""

    der: bytes

    def pem(self) -> bytes:
        body = base64.encodebytes(self.der).decode().replace("\n", "")
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        return ("-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines)
                + "\n-----END PUBLIC KEY-----\n").encode()


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        c = ctypes
        lib.d2i_PUBKEY.restype = c.c_void_p
        lib.d2i_PUBKEY.argtypes = [c.c_void_p, c.POINTER(c.c_char_p), c.c_long]
        lib.EVP_PKEY_free.argtypes = [c.c_void_p]
        lib.EVP_PKEY_is_a.argtypes = [c.c_void_p, c.c_char_p]
        lib.EVP_MD_CTX_new.restype = c.c_void_p
        lib.EVP_MD_CTX_free.argtypes = [c.c_void_p]
        lib.EVP_PKEY_CTX_new_from_pkey.restype = c.c_void_p
        lib.EVP_PKEY_CTX_new_from_pkey.argtypes = [c.c_void_p, c.c_void_p, c.c_char_p]
        lib.EVP_PKEY_CTX_free.argtypes = [c.c_void_p]
        lib.EVP_PKEY_CTX_set1_id.argtypes = [c.c_void_p, c.c_char_p, c.c_int]
        lib.EVP_MD_CTX_set_pkey_ctx.argtypes = [c.c_void_p, c.c_void_p]
        lib.EVP_sm3.restype = c.c_void_p
        lib.EVP_DigestVerifyInit.argtypes = [c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p,
                                             c.c_void_p]
        lib.EVP_DigestVerify.argtypes = [c.c_void_p, c.c_char_p, c.c_size_t, c.c_char_p,
                                         c.c_size_t]
        lib.ERR_clear_error.argtypes = []
    except (OSError, AttributeError):      # no libcrypto 3 here (1.1 lacks these calls)
        return None
    return lib


def _pkey(lib: ctypes.CDLL, der: bytes) -> int | None:
    buf = ctypes.c_char_p(der)
    pkey = lib.d2i_PUBKEY(None, ctypes.byref(buf), len(der))
    if not pkey:
        lib.ERR_clear_error()
        return None
    if lib.EVP_PKEY_is_a(pkey, b"SM2") != 1:
        lib.EVP_PKEY_free(pkey)
        return None
    return int(pkey)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when this machine's libcrypto verifies SM2 with SM3."""
    lib = _lib()
    return lib is not None and bool(lib.EVP_sm3())


def load_public_der(der: bytes) -> Sm2PublicKey | None:
    """The key if ``der`` is an SM2 SubjectPublicKeyInfo, else None."""
    lib = _lib()
    if lib is None:
        return None
    pkey = _pkey(lib, der)
    if pkey is None:
        return None
    lib.EVP_PKEY_free(pkey)
    return Sm2PublicKey(bytes(der))


# the SM2 curve (GB/T 32918.5): y² = x³ + ax + b over GF(p), p ≡ 3 (mod 4)
_P = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)
_A = _P - 3
_B = int("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93", 16)


def _uncompressed(point: bytes) -> bytes | None:
    """``04 || x || y`` for a compressed point (so a key has one DER form, whatever form
    it arrived in: key ids are hashes of it); None if ``x`` is not on the curve."""
    if len(point) != 33 or point[0] not in (2, 3):
        return point
    x = int.from_bytes(point[1:], "big")
    if x >= _P:
        return None
    rhs = (pow(x, 3, _P) + _A * x + _B) % _P
    y = pow(rhs, (_P + 1) // 4, _P)
    if y * y % _P != rhs:
        return None
    if y % 2 != point[0] % 2:
        y = _P - y
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def public_key_from_point(point: bytes) -> Sm2PublicKey | None:
    """The key of an SEC1-encoded point (compressed or not) on the SM2 curve, or None for
    a point that is not on it. The key is kept in uncompressed form."""
    full = _uncompressed(point)
    if full is None:
        return None
    bits = b"\x03" + _der_len(len(full) + 1) + b"\x00" + full
    body = _SPKI_ALG + bits
    return load_public_der(b"\x30" + _der_len(len(body)) + body)


def _der_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else b"\x81" + bytes([n])


def verify(key: Sm2PublicKey, der_signature: bytes, data: bytes) -> bool:
    """True if ``der_signature`` (DER ``SEQUENCE {r, s}``) is ``key``'s SM2 signature of
    ``data``; never raises for a bad one."""
    lib = _lib()
    if lib is None:
        return False
    pkey = _pkey(lib, key.der)
    if pkey is None:
        return False
    md = lib.EVP_MD_CTX_new()
    pctx = lib.EVP_PKEY_CTX_new_from_pkey(None, pkey, None)
    try:
        if not md or not pctx or lib.EVP_PKEY_CTX_set1_id(pctx, SM2_DEFAULT_ID, 16) != 1:
            return False
        lib.EVP_MD_CTX_set_pkey_ctx(md, pctx)
        if lib.EVP_DigestVerifyInit(md, None, lib.EVP_sm3(), None, pkey) != 1:
            return False
        ok = lib.EVP_DigestVerify(md, der_signature, len(der_signature), data, len(data)) == 1
        return ok
    finally:
        lib.ERR_clear_error()
        if md:
            lib.EVP_MD_CTX_free(md)
        if pctx:                           # set_pkey_ctx leaves it to its caller
            lib.EVP_PKEY_CTX_free(pctx)
        lib.EVP_PKEY_free(pkey)


def _verifier_class() -> type:
    from agent.codes.algorithms import (
        SM2_ALG_ID,
        SM2_CRV_ID,
        AlgorithmUnavailable,
        KeyFormatError,
        SignatureAlgorithm,
        _ec2_point,
        _raw_to_der,
    )

    def _no_signing(*_args: object) -> Any:
        raise AlgorithmUnavailable("SM2 signing needs the optional 'tongsuopy' package; "
                                   "this machine verifies SM2 with its libcrypto only")

    class SM2Verifier(SignatureAlgorithm):
        """SM2-with-SM3 verification through libcrypto (no signing): the terminal side."""

        name, cose_id = "SM2", SM2_ALG_ID
        backend = "libcrypto"

        def generate(self) -> Any:
            return _no_signing()

        def sign(self, private_key: Any, data: bytes) -> bytes:
            return bytes(_no_signing())

        def load_private_pem(self, pem: bytes) -> Any:
            return _no_signing()

        def private_pem(self, private_key: Any) -> bytes:
            return bytes(_no_signing())

        def public_key(self, private_key: Any) -> Any:
            return _no_signing()

        def verify(self, public_key: Any, signature: bytes, data: bytes) -> bool:
            der = _raw_to_der(signature)
            return der is not None and verify(public_key, der, data)

        def cose_key(self, public_key: Any) -> dict[int, Any]:
            return _no_signing()

        def from_cose_key(self, key: Any) -> Any:
            pk = public_key_from_point(_ec2_point(key, SM2_CRV_ID))
            if pk is None:
                raise KeyFormatError("bad SM2 point: not on the SM2 curve")
            return pk

        def load_public_pem(self, pem: bytes) -> Any:
            text = pem.decode("ascii", "replace")
            body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
            try:
                der = base64.b64decode(body, validate=False)
            except ValueError as err:
                raise KeyFormatError(f"not a PEM SM2 public key: {err}") from err
            pk = load_public_der(der)
            if pk is None:
                raise KeyFormatError("SM2 needs a public key on the SM2 curve")
            return pk

        def public_pem(self, public_key: Any) -> bytes:
            return bytes(public_key.pem())

        def public_der(self, public_key: Any) -> bytes:
            return bytes(public_key.der)

    return SM2Verifier


@functools.lru_cache(maxsize=1)
def verifier_class() -> type:
    """The verify-only SM2 :class:`~agent.codes.algorithms.SignatureAlgorithm`."""
    return _verifier_class()
