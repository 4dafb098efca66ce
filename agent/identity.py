"""Who a terminal and a hub are: the files that hold their keys and certificates, and the
signatures made with them (``docs/security.md``).

Identities travel between enrollment and the signed protocol as files, so either side can
be replaced without the other noticing:

* a terminal's identity directory (``[identity] dir``): ``terminal.key`` (its private key,
  made on the device, mode 0600), ``terminal.crt`` (its client certificate, CN = terminal
  id), ``ca.crt`` (the hub CA) and ``hub-signing.pub`` (the public key the hub signs acks
  and its status with);
* the hub's identity directory (``--identity``): ``ca.key``/``ca.crt``,
  ``hub-signing.key``/``hub-signing.pub``, ``hub.key``/``hub.crt`` (its own MQTT client
  certificate), ``terminals/{terminal}.crt`` for each enrolled terminal and
  ``terminals/{terminal}.revoked`` for each revoked one, ``crl.pem``.

Signatures: ECDSA P-256 with SHA-256 (DER-encoded) or Ed25519, chosen by the key. Errors
name the file: :class:`IdentityError` (a configuration error, ``ykt`` exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.errors import ConfigurationError

__all__ = ["HubIdentityPaths", "IdentityError", "PrivateKey", "PublicKey",
           "TerminalIdentityPaths", "load_certificate", "load_private_key",
           "load_public_key", "public_key_from_cert", "sign", "verify"]

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class IdentityError(ConfigurationError):
    """A key or certificate file is missing, unreadable or of a kind we do not sign with."""


@dataclass(frozen=True)
class TerminalIdentityPaths:
    """The files of a terminal's identity directory."""

    dir: Path

    @property
    def key(self) -> Path:
        return self.dir / "terminal.key"

    @property
    def cert(self) -> Path:
        return self.dir / "terminal.crt"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def hub_key(self) -> Path:
        return self.dir / "hub-signing.pub"


@dataclass(frozen=True)
class HubIdentityPaths:
    """The files of the hub's identity directory."""

    dir: Path

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def signing_key(self) -> Path:
        return self.dir / "hub-signing.key"

    @property
    def signing_pub(self) -> Path:
        return self.dir / "hub-signing.pub"

    @property
    def client_key(self) -> Path:
        return self.dir / "hub.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "hub.crt"

    @property
    def crl(self) -> Path:
        return self.dir / "crl.pem"

    def terminal_cert(self, terminal: str) -> Path:
        return self.dir / "terminals" / f"{terminal}.crt"

    def terminal_revoked(self, terminal: str) -> Path:
        return self.dir / "terminals" / f"{terminal}.revoked"


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise IdentityError(f"{path}: cannot read the {what}: {err.strerror or err}") from None


def load_private_key(path: Path) -> PrivateKey:
    """The ECDSA P-256 or Ed25519 private key in PEM file ``path``."""
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as err:
        raise IdentityError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise IdentityError(f"{path}: only ECDSA P-256 and Ed25519 keys are used here")


def _check_public(key: object, path: Path) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise IdentityError(f"{path}: only ECDSA P-256 and Ed25519 keys are used here")


def load_public_key(path: Path) -> PublicKey:
    """The public key in PEM file ``path`` (SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(_read(path, "public key"))
    except (ValueError, TypeError) as err:
        raise IdentityError(f"{path}: not a PEM public key ({err})") from None
    return _check_public(key, path)


def load_certificate(path: Path) -> x509.Certificate:
    """The X.509 certificate in PEM file ``path``."""
    try:
        return x509.load_pem_x509_certificate(_read(path, "certificate"))
    except ValueError as err:
        raise IdentityError(f"{path}: not a PEM certificate ({err})") from None


def public_key_from_cert(cert: x509.Certificate, path: Path = Path("<certificate>")
                         ) -> PublicKey:
    """The subject public key of ``cert`` (P-256 or Ed25519)."""
    return _check_public(cert.public_key(), path)


def sign(key: PrivateKey, data: bytes) -> bytes:
    """Sign ``data``: ECDSA P-256/SHA-256 (DER) or Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is ``key``'s over ``data``; never raises for a bad one."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
