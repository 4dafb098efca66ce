"""Signature algorithms for dynamic codes: ES256 (default), EdDSA (Ed25519), SM2-with-SM3.

Each algorithm converts keys between PEM (trust files, ``ykt qr issue``), COSE_Key (the
``cnf`` claim of a holder certificate, RFC 9052/9053) and library objects, and signs and
verifies with raw fixed-size signatures as COSE requires (``r || s`` for the EC ones).

SM2 has no registered COSE identifiers; this scheme uses private-use values
(:data:`SM2_ALG_ID`, :data:`SM2_CRV_ID`) and the SM2 default user ID
``1234567812345678`` (GB/T 35276). It needs the optional ``tongsuopy`` package
(``pip install 'yikatong-edge[sm2]'``); without it, :func:`algorithm` raises
:class:`AlgorithmUnavailable` when an SM2 key is configured or met.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from agent.errors import ConfigurationError, Unavailable

__all__ = [
    "ALGORITHM_NAMES",
    "SM2_ALG_ID",
    "SM2_CRV_ID",
    "AlgorithmUnavailable",
    "KeyFormatError",
    "SignatureAlgorithm",
    "algorithm",
    "algorithm_by_cose_id",
]

SM2_ALG_ID = -65537
"""COSE ``alg`` for SM2-with-SM3 (private use: no IANA registration exists)."""
SM2_CRV_ID = -65537
"""COSE ``crv`` for the SM2 curve (private use)."""

# COSE_Key labels (RFC 9052 §7, RFC 9053 §7)
_KTY, _ALG, _CRV, _X, _Y = 1, 3, -1, -2, -3
_KTY_OKP, _KTY_EC2 = 1, 2
_CRV_P256, _CRV_ED25519 = 1, 6


class AlgorithmUnavailable(Unavailable):
    """The algorithm is known but its library is not installed (SM2 without tongsuopy)."""


class KeyFormatError(ConfigurationError):
    """A key (PEM or COSE_Key) is malformed or does not match the algorithm."""


class SignatureAlgorithm(abc.ABC):
    """One signature algorithm. ``name`` is the COSE name, ``cose_id`` its ``alg`` value."""

    name: str
    cose_id: int

    @abc.abstractmethod
    def generate(self) -> Any:
        """A new private key."""

    @abc.abstractmethod
    def public_key(self, private_key: Any) -> Any:
        """The public key of ``private_key``."""

    @abc.abstractmethod
    def sign(self, private_key: Any, data: bytes) -> bytes:
        """Raw signature of ``data``."""

    @abc.abstractmethod
    def verify(self, public_key: Any, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` is valid for ``data``; False otherwise (never raises on bad input)."""

    @abc.abstractmethod
    def cose_key(self, public_key: Any) -> dict[int, Any]:
        """COSE_Key map of ``public_key`` (compact: EC points compressed)."""

    @abc.abstractmethod
    def from_cose_key(self, key: Mapping[Any, Any]) -> Any:
        """Public key from a COSE_Key map. Raises :class:`KeyFormatError`."""

    @abc.abstractmethod
    def load_public_pem(self, pem: bytes) -> Any:
        """Public key from PEM SubjectPublicKeyInfo. Raises :class:`KeyFormatError`."""

    @abc.abstractmethod
    def load_private_pem(self, pem: bytes) -> Any:
        """Private key from unencrypted PEM PKCS#8. Raises :class:`KeyFormatError`."""

    @abc.abstractmethod
    def public_pem(self, public_key: Any) -> bytes:
        """PEM SubjectPublicKeyInfo of ``public_key``."""

    @abc.abstractmethod
    def private_pem(self, private_key: Any) -> bytes:
        """Unencrypted PEM PKCS#8 of ``private_key``."""

    @abc.abstractmethod
    def public_der(self, public_key: Any) -> bytes:
        """DER SubjectPublicKeyInfo of ``public_key`` (e.g. to derive a key id from)."""


def _raw_to_der(signature: bytes) -> bytes | None:
    if len(signature) != 64:
        return None
    return encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                int.from_bytes(signature[32:], "big"))


def _der_to_raw(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _ec2_point(key: Mapping[Any, Any], crv: int) -> bytes:
    """SEC1 encoded point from an EC2 COSE_Key (``y`` a 32-byte value or a sign bool)."""
    if key.get(_KTY) != _KTY_EC2 or key.get(_CRV) != crv:
        raise KeyFormatError("COSE_Key is not an EC2 key on the expected curve")
    x, y = key.get(_X), key.get(_Y)
    if not isinstance(x, bytes) or len(x) != 32:
        raise KeyFormatError("COSE_Key x must be 32 bytes")
    if isinstance(y, bool):
        return bytes([0x03 if y else 0x02]) + x
    if isinstance(y, bytes) and len(y) == 32:
        return b"\x04" + x + y
    raise KeyFormatError("COSE_Key y must be 32 bytes or a sign bit")


def _ec2_cose(point_compressed: bytes, crv: int, alg: int) -> dict[int, Any]:
    return {_KTY: _KTY_EC2, _ALG: alg, _CRV: crv, _X: point_compressed[1:],
            _Y: point_compressed[0] == 0x03}


class _CryptographyAlgorithm(SignatureAlgorithm):
    """Key handling shared by the algorithms of the ``cryptography`` package: PEM/DER
    serialisation, and PEM loading that checks the key type with :meth:`_is_public` /
    :meth:`_is_private` (``key_desc`` names the expected key in errors)."""

    key_desc: str

    @abc.abstractmethod
    def _is_public(self, key: Any) -> bool:
        """True if ``key`` is a public key of this algorithm."""

    @abc.abstractmethod
    def _is_private(self, key: Any) -> bool:
        """True if ``key`` is a private key of this algorithm."""

    def public_key(self, private_key: Any) -> Any:
        return private_key.public_key()

    def load_public_pem(self, pem: bytes) -> Any:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as err:
            raise KeyFormatError(f"not a PEM public key: {err}") from err
        if not self._is_public(key):
            raise KeyFormatError(f"{self.name} needs {self.key_desc} public key")
        return key

    def load_private_pem(self, pem: bytes) -> Any:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise KeyFormatError(f"not an unencrypted PEM private key: {err}") from err
        if not self._is_private(key):
            raise KeyFormatError(f"{self.name} needs {self.key_desc} private key")
        return key

    def public_pem(self, public_key: Any) -> bytes:
        return bytes(public_key.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))

    def public_der(self, public_key: Any) -> bytes:
        return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))

    def private_pem(self, private_key: Any) -> bytes:
        return bytes(private_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))


class ES256(_CryptographyAlgorithm):
    """ECDSA on P-256 with SHA-256 (COSE -7), the default."""

    name, cose_id = "ES256", -7
    key_desc = "a P-256 (secp256r1)"

    def _is_public(self, key: Any) -> bool:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"

    def _is_private(self, key: Any) -> bool:
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    def generate(self) -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    def sign(self, private_key: Any, data: bytes) -> bytes:
        return _der_to_raw(private_key.sign(data, ec.ECDSA(hashes.SHA256())))

    def verify(self, public_key: Any, signature: bytes, data: bytes) -> bool:
        der = _raw_to_der(signature)
        if der is None:
            return False
        try:
            public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def cose_key(self, public_key: Any) -> dict[int, Any]:
        pt = public_key.public_bytes(serialization.Encoding.X962,
                                     serialization.PublicFormat.CompressedPoint)
        return _ec2_cose(pt, _CRV_P256, self.cose_id)

    def from_cose_key(self, key: Mapping[Any, Any]) -> Any:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), _ec2_point(key, _CRV_P256))
        except ValueError as err:
            raise KeyFormatError(f"bad P-256 point: {err}") from err


class EdDSA(_CryptographyAlgorithm):
    """Ed25519 (COSE -8)."""

    name, cose_id = "EdDSA", -8
    key_desc = "an Ed25519"

    def _is_public(self, key: Any) -> bool:
        return isinstance(key, ed25519.Ed25519PublicKey)

    def _is_private(self, key: Any) -> bool:
        return isinstance(key, ed25519.Ed25519PrivateKey)

    def generate(self) -> Any:
        return ed25519.Ed25519PrivateKey.generate()

    def sign(self, private_key: Any, data: bytes) -> bytes:
        return bytes(private_key.sign(data))

    def verify(self, public_key: Any, signature: bytes, data: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            public_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def cose_key(self, public_key: Any) -> dict[int, Any]:
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {_KTY: _KTY_OKP, _ALG: self.cose_id, _CRV: _CRV_ED25519, _X: raw}

    def from_cose_key(self, key: Mapping[Any, Any]) -> Any:
        x = key.get(_X)
        if key.get(_KTY) != _KTY_OKP or key.get(_CRV) != _CRV_ED25519 or not (
                isinstance(x, bytes) and len(x) == 32):
            raise KeyFormatError("COSE_Key is not an Ed25519 OKP key")
        return ed25519.Ed25519PublicKey.from_public_bytes(x)


class SM2SM3(SignatureAlgorithm):
    """SM2 signature with SM3 (GB/T 32918, 国密), via tongsuopy; COSE private-use id."""

    name, cose_id = "SM2", SM2_ALG_ID

    def __init__(self) -> None:
        try:
            from tongsuopy.crypto import hashes as t_hashes
            from tongsuopy.crypto import serialization as t_ser
            from tongsuopy.crypto.asymciphers import ec as t_ec
            from tongsuopy.crypto.exceptions import InvalidSignature as TInvalid
        except ImportError as err:
            raise AlgorithmUnavailable(
                "SM2 keys need the optional 'tongsuopy' package, which is not installed; "
                "install it with: pip install 'yikatong-edge[sm2]'") from err
        self._ec, self._ser, self._invalid = t_ec, t_ser, TInvalid
        self._sig = t_ec.ECDSA(t_hashes.SM3())

    def generate(self) -> Any:
        return self._ec.generate_private_key(self._ec.SM2())

    def public_key(self, private_key: Any) -> Any:
        return private_key.public_key()

    def sign(self, private_key: Any, data: bytes) -> bytes:
        return _der_to_raw(bytes(private_key.sign(data, self._sig)))

    def verify(self, public_key: Any, signature: bytes, data: bytes) -> bool:
        der = _raw_to_der(signature)
        if der is None:
            return False
        try:
            public_key.verify(der, data, self._sig)
        except self._invalid:
            return False
        return True

    def cose_key(self, public_key: Any) -> dict[int, Any]:
        pt = public_key.public_bytes(self._ser.Encoding.X962,
                                     self._ser.PublicFormat.CompressedPoint)
        return _ec2_cose(bytes(pt), SM2_CRV_ID, self.cose_id)

    def from_cose_key(self, key: Mapping[Any, Any]) -> Any:
        point = _ec2_point(key, SM2_CRV_ID)
        try:
            return self._ec.EllipticCurvePublicKey.from_encoded_point(self._ec.SM2(), point)
        except Exception as err:  # tongsuopy raises assorted errors for off-curve points
            raise KeyFormatError(f"bad SM2 point: {err}") from err

    def _on_sm2(self, key: Any) -> bool:
        return isinstance(getattr(key, "curve", None), self._ec.SM2)

    def load_public_pem(self, pem: bytes) -> Any:
        try:
            key = self._ser.load_pem_public_key(pem)
        except Exception as err:
            raise KeyFormatError(f"not a PEM SM2 public key: {err}") from err
        if not (isinstance(key, self._ec.EllipticCurvePublicKey) and self._on_sm2(key)):
            raise KeyFormatError("SM2 needs a public key on the SM2 curve")
        return key

    def load_private_pem(self, pem: bytes) -> Any:
        try:
            key = self._ser.load_pem_private_key(pem, password=None)
        except Exception as err:
            raise KeyFormatError(f"not an unencrypted PEM SM2 private key: {err}") from err
        if not (isinstance(key, self._ec.EllipticCurvePrivateKey) and self._on_sm2(key)):
            raise KeyFormatError("SM2 needs a private key on the SM2 curve")
        return key

    def public_pem(self, public_key: Any) -> bytes:
        return bytes(public_key.public_bytes(self._ser.Encoding.PEM,
                                             self._ser.PublicFormat.SubjectPublicKeyInfo))

    def public_der(self, public_key: Any) -> bytes:
        return bytes(public_key.public_bytes(self._ser.Encoding.DER,
                                             self._ser.PublicFormat.SubjectPublicKeyInfo))

    def private_pem(self, private_key: Any) -> bytes:
        return bytes(private_key.private_bytes(self._ser.Encoding.PEM,
                                               self._ser.PrivateFormat.PKCS8,
                                               self._ser.NoEncryption()))


_CLASSES: dict[str, type[SignatureAlgorithm]] = {"ES256": ES256, "EdDSA": EdDSA, "SM2": SM2SM3}
_BY_ID = {-7: "ES256", -8: "EdDSA", SM2_ALG_ID: "SM2"}
ALGORITHM_NAMES = tuple(_CLASSES)
_instances: dict[str, SignatureAlgorithm] = {}


def algorithm(name: str) -> SignatureAlgorithm:
    """The algorithm called ``name`` (``ES256``, ``EdDSA``, ``SM2``; ``SM2SM3`` also accepted).

    Raises ``ValueError`` for an unknown name and :class:`AlgorithmUnavailable` for SM2
    with neither tongsuopy nor an SM2-capable libcrypto (then SM2 verifies through
    :mod:`agent.codes.sm2_libcrypto`, which cannot sign).
    """
    key = "SM2" if name.upper() in ("SM2", "SM2SM3", "SM2-SM3") else name
    key = {"ES256": "ES256", "EDDSA": "EdDSA", "ED25519": "EdDSA"}.get(key.upper(), key)
    inst = _instances.get(key)
    if inst is None:
        cls = _CLASSES.get(key)
        if cls is None:
            raise ValueError(f"unknown signature algorithm {name!r} "
                             f"(known: {', '.join(ALGORITHM_NAMES)})")
        if key == "SM2":
            # tongsuopy, else the system's libcrypto (no tongsuopy wheels on aarch64); only
            # a backend that passes the known-answer test is used or claimed
            from agent.codes.sm2_check import checked_sm2

            inst = checked_sm2()
        else:
            inst = cls()
        _instances[key] = inst
    return inst


def sm2_backend() -> str:
    """Which SM2 implementation verifies here: ``tongsuopy``, ``libcrypto`` (verify
    only), or ``none`` (also when a library is there but fails the known-answer test of
    :mod:`agent.codes.sm2_check`)."""
    try:
        return str(getattr(algorithm("SM2"), "backend", "tongsuopy"))
    except AlgorithmUnavailable:
        return "none"


def algorithm_by_cose_id(cose_id: object) -> SignatureAlgorithm | None:
    """The algorithm for a COSE ``alg`` value, or None if unknown.

    Raises :class:`AlgorithmUnavailable` for SM2 without tongsuopy.
    """
    if not isinstance(cose_id, int) or isinstance(cose_id, bool):
        return None
    name = _BY_ID.get(cose_id)
    return None if name is None else algorithm(name)
