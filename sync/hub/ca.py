"""The hub CA: the certificates every MQTT client and the broker present, and the CRL.

``ykt hub ca init --identity DIR`` makes the hub identity directory of the trust contract
(:class:`agent.identity.HubIdentityPaths`): the CA (ECDSA P-256, ``ca.key`` mode 0600),
the hub's ack/status-signing key pair, the hub process's own client certificate (CN = hub
instance id), an administrator certificate for the broker's dynamic-security control
topic (``admin.key``/``admin.crt``, CN ``ykt-admin``) and an empty CRL. Everything is made
with ``cryptography``'s X.509 API; nothing shells out to ``openssl``.

A client certificate's CN is the MQTT user name (the broker runs with
``use_identity_as_username``), so it is the terminal id, the hub instance id or an
operator's name; its role travels in the OU (``terminal``/``hub``/``operator``/``admin``).

Validity, in days: the CA 10 years; client certificates :data:`CLIENT_DAYS` (renewed at
two thirds, see :mod:`agent.enroll`); the CRL :data:`CRL_DAYS` (re-issue it daily with
``ykt hub crl``; an expired CRL fails every TLS handshake). Errors:
:class:`agent.identity.IdentityError` (a configuration error).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.identity import (
    HubIdentityPaths,
    IdentityError,
    PublicKey,
    load_certificate,
    load_private_key,
)
from agent.keyfiles import write_file, write_private_key, write_public
from agent.names import validate_name

__all__ = ["ADMIN_NAME", "CA_DAYS", "CLIENT_DAYS", "CRL_DAYS", "Role", "HubCA",
           "fingerprint", "new_private_key", "write_private_key", "write_public"]

Role = Literal["terminal", "hub", "operator", "admin"]
ROLES: tuple[Role, ...] = ("terminal", "hub", "operator", "admin")
CA_DAYS = 3650
CLIENT_DAYS = 90
CRL_DAYS = 7
ADMIN_NAME = "ykt-admin"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of ``cert``'s DER encoding, lowercase hex (what a token pins)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


class HubCA:
    """The CA of one hub identity directory; :meth:`init` makes one, the constructor loads it."""

    def __init__(self, directory: Path) -> None:
        self.paths = HubIdentityPaths(Path(directory))
        self.key = load_private_key(self.paths.ca_key)
        self.cert = load_certificate(self.paths.ca_cert)

    @classmethod
    def init(cls, directory: Path, *, hub_id: str = "hub-1") -> HubCA:
        """Create the hub identity directory. Raises :class:`IdentityError` if it has a CA."""
        paths = HubIdentityPaths(Path(directory))
        if paths.ca_key.exists():
            raise IdentityError(f"{paths.ca_key}: a hub CA exists already; not replacing it")
        validate_name(hub_id, "hub instance")
        paths.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.dir, 0o700)
        key = new_private_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong Edge"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"Yikatong hub CA {hub_id}")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        write_private_key(paths.ca_key, key)
        write_public(paths.ca_cert, cert)
        signing = new_private_key()
        write_private_key(paths.signing_key, signing)
        write_public(paths.signing_pub, signing.public_key())
        (paths.dir / "terminals").mkdir(mode=0o700, exist_ok=True)
        ca = cls(paths.dir)
        ca.issue_identity(hub_id, "hub", paths.dir, basename="hub")
        ca.issue_identity(ADMIN_NAME, "admin", paths.dir, basename="admin")
        ca.write_crl()
        return ca

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    # -- issuing -------------------------------------------------------------------------
    def _builder(self, subject: x509.Name, public_key: PublicKey, days: float,
                 not_before: dt.datetime | None) -> x509.CertificateBuilder:
        start = not_before or (_now() - dt.timedelta(minutes=5))
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(self.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ski.value), critical=False))

    def issue_client(self, public_key: PublicKey, name: str, role: Role, *,
                     days: float = CLIENT_DAYS, not_before: dt.datetime | None = None
                     ) -> x509.Certificate:
        """A TLS client certificate, CN = ``name`` (the MQTT user name), OU = ``role``."""
        if role not in ROLES:
            raise IdentityError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        validate_name(name, "identity name")
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong Edge"),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return (self._builder(subject, public_key, days, not_before)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))

    def issue_server(self, public_key: PublicKey, hosts: Iterable[str], *,
                     days: float = 825) -> x509.Certificate:
        """A TLS server certificate (the broker, the enrollment endpoint) for ``hosts``
        (DNS names or IP addresses; the first is the CN)."""
        hosts = list(hosts)
        if not hosts:
            raise IdentityError("a server certificate needs at least one host name")
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong Edge"),
                             x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return (self._builder(subject, public_key, days, None)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))

    def issue_identity(self, name: str, role: Role, out_dir: Path, *,
                       basename: str | None = None, days: float = CLIENT_DAYS
                       ) -> tuple[Path, Path]:
        """Make a key pair and client certificate in ``out_dir`` (``{basename}.key`` mode
        0600, ``{basename}.crt``) plus ``ca.crt``; returns (key path, cert path).

        For identities kept by the hub's operators (hub instances, publishers); terminals
        make their own key and send a CSR (:meth:`sign_csr`).
        """
        base = basename or name
        key = new_private_key()
        cert = self.issue_client(key.public_key(), name, role, days=days)
        out = Path(out_dir)
        key_path, cert_path = out / f"{base}.key", out / f"{base}.crt"
        write_private_key(key_path, key)
        write_public(cert_path, cert)
        if out.resolve() != self.paths.dir.resolve():
            write_public(out / "ca.crt", self.cert)
        return key_path, cert_path

    def sign_csr(self, csr: x509.CertificateSigningRequest, name: str, *,
                 days: float = CLIENT_DAYS, not_before: dt.datetime | None = None
                 ) -> x509.Certificate:
        """A terminal certificate, CN = ``name``, for a CSR whose signature holds (its own
        CN, if any, must be ``name``: a terminal may not know its id before enrollment).

        Raises :class:`IdentityError` if the CSR is not self-signed correctly, names
        another terminal or carries a key we do not use.
        """
        if not csr.is_signature_valid:
            raise IdentityError("the CSR's signature does not verify")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) > 1 or (cns and cns[0].value != name):
            raise IdentityError(f"the CSR must have no CN or exactly CN={name}")
        pub = csr.public_key()
        if not ((isinstance(pub, ec.EllipticCurvePublicKey)
                 and isinstance(pub.curve, ec.SECP256R1))
                or isinstance(pub, ed25519.Ed25519PublicKey)):
            raise IdentityError("the CSR's key must be ECDSA P-256 or Ed25519")
        return self.issue_client(pub, name, "terminal", days=days, not_before=not_before)

    # -- terminals and revocation --------------------------------------------------------
    def enrolled(self) -> list[str]:
        """The ids of every terminal with a certificate, revoked or not, sorted."""
        d = self.paths.dir / "terminals"
        return sorted(p.stem for p in d.glob("*.crt")) if d.is_dir() else []

    def is_revoked(self, terminal: str) -> bool:
        return self.paths.terminal_revoked(terminal).exists()

    def record_terminal(self, terminal: str, cert: x509.Certificate) -> None:
        """Store ``terminals/{terminal}.crt`` (a renewal replaces it)."""
        write_public(self.paths.terminal_cert(terminal), cert)
        issued = self.paths.dir / "terminals" / f"{terminal}.serials"
        with open(issued, "a", encoding="ascii") as f:
            f.write(f"{cert.serial_number:x}\n")

    def revoke(self, terminal: str) -> int:
        """Mark ``terminal`` revoked (every certificate ever issued to it) and re-issue the
        CRL. Returns how many serial numbers were revoked. ``IdentityError`` if unknown."""
        if not self.paths.terminal_cert(terminal).exists():
            raise IdentityError(f"terminal {terminal} is not enrolled with this hub")
        serials = self._serials(terminal)
        write_file(self.paths.terminal_revoked(terminal),
               "".join(f"{s:x}\n" for s in serials).encode(), 0o644)
        self.write_crl()
        return len(serials)

    def _serials(self, terminal: str) -> list[int]:
        issued = self.paths.dir / "terminals" / f"{terminal}.serials"
        found = {load_certificate(self.paths.terminal_cert(terminal)).serial_number}
        if issued.exists():
            found |= {int(s, 16) for s in issued.read_text().split()}
        return sorted(found)

    def write_crl(self, *, days: float = CRL_DAYS) -> x509.CertificateRevocationList:
        """Issue ``crl.pem`` listing every revoked terminal's serials, valid ``days``."""
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(now - dt.timedelta(minutes=5))
                   .next_update(now + dt.timedelta(days=days)))
        d = self.paths.dir / "terminals"
        for marker in sorted(d.glob("*.revoked")) if d.is_dir() else []:
            for s in marker.read_text().split():
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(s, 16))
                    .revocation_date(now).build())
        crl = builder.sign(self.key, hashes.SHA256())
        write_public(self.paths.crl, crl)
        return crl
