"""Enrollment and renewal on the terminal (``ykt enroll``; ``docs/security.md``).

:func:`enroll` makes the terminal's key pair here (ECDSA P-256; the private key never
leaves the device), fetches the hub CA and accepts it only if its SHA-256 fingerprint is
the one in the token, then sends a CSR and the token over HTTPS verified against that CA,
and stores the identity directory of the trust contract
(:class:`agent.identity.TerminalIdentityPaths`): ``terminal.key`` (0600),
``terminal.crt``, ``ca.crt``, ``hub-signing.pub`` (0644), in a 0700 directory.

:func:`renew` replaces the key and certificate once two thirds of the certificate's
validity have passed (certbot's habit), proving possession of the current key by signing
the new CSR with it — no token, no technician. A certificate that has already expired
cannot renew: :class:`CertificateExpired` says to re-enroll with a new token.

Errors: :class:`EnrollmentError` (refused by the hub, fingerprint mismatch, hub not
reachable), a :class:`agent.errors.YktError`. Nothing here logs or returns the token.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import YktError
from agent.identity import (
    PrivateKey,
    TerminalIdentityPaths,
    load_certificate,
    load_private_key,
    sign,
)
from agent.keyfiles import write_file, write_private_key

__all__ = ["CertificateExpired", "EnrollmentError", "Enrolled", "enroll", "renew",
           "renewal_due"]

TIMEOUT_S = 30.0


class EnrollmentError(YktError):
    """The hub refused, could not be reached, or is not the hub the token names."""


class CertificateExpired(EnrollmentError):
    """The terminal's certificate has expired: only a new token can enroll it again."""


@dataclass(frozen=True)
class Enrolled:
    """The outcome of an enrollment or renewal (no secrets in it)."""

    terminal: str
    identity_dir: Path
    not_after: dt.datetime
    channels: list[str]
    renewed: bool

    def as_json(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "identity_dir": str(self.identity_dir),
                "not_after": self.not_after.isoformat(), "channels": self.channels,
                "renewed": self.renewed}


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _request(url: str, ctx: ssl.SSLContext, body: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=ctx) as resp:
            out = json.loads(resp.read(256 * 1024))
    except urllib.error.HTTPError as err:
        try:
            reason = json.loads(err.read(4096)).get("error", err.reason)
        except ValueError:
            reason = err.reason
        raise EnrollmentError(f"the hub refused: {reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise EnrollmentError(f"cannot reach the hub at {url}: {err}") from None
    if not isinstance(out, dict):
        raise EnrollmentError("the hub's answer is not a JSON object")
    return out


def _fetch_pinned_ca(hub_url: str, expected_fp: str) -> bytes:
    """The hub CA (PEM), accepted only if its SHA-256 is ``expected_fp``."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE      # authenticated by the pinned fingerprint
    ca_pem = str(_request(f"{hub_url}/v1/ca", unverified).get("ca", "")).encode()
    try:
        der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise EnrollmentError("the hub sent no CA certificate") from None
    if hashlib.sha256(der).hexdigest() != expected_fp.lower():
        raise EnrollmentError("the hub's CA does not match the token's fingerprint: "
                              "not the hub that issued this token")
    return ca_pem


def _verified(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def _store(paths: TerminalIdentityPaths, key: PrivateKey, answer: dict[str, Any],
           ca_pem: bytes | None, renewed: bool) -> Enrolled:
    cert_pem = str(answer.get("certificate", "")).encode()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise EnrollmentError("the hub sent no certificate") from None
    if cert.public_key() != key.public_key():
        raise EnrollmentError("the hub's certificate is not for the key made here")
    paths.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    if ca_pem is not None:
        write_file(paths.ca, ca_pem, 0o644)
    write_file(paths.hub_key, str(answer.get("hub_signing_pub", "")).encode(), 0o644)
    write_private_key(paths.key, key)
    write_file(paths.cert, cert_pem, 0o644)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Enrolled(str(cn[0].value) if cn else "", paths.dir, cert.not_valid_after_utc,
                    [str(c) for c in answer.get("channels", [])], renewed)


def enroll(hub_url: str, token: str, identity_dir: Path) -> Enrolled:
    """Enroll with a one-time ``token`` (see the module docstring)."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != "ykt1" or len(parts[1]) != 64:
        raise EnrollmentError("not an enrollment token (ykt1.<fingerprint>.<secret>)")
    hub_url = hub_url.rstrip("/")
    ca_pem = _fetch_pinned_ca(hub_url, parts[1])
    paths = TerminalIdentityPaths(Path(identity_dir))
    paths.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.dir, 0o700)
    pinned = paths.dir / "ca.crt.pinned"
    write_file(pinned, ca_pem, 0o644)
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        answer = _request(f"{hub_url}/v1/enroll", _verified(pinned),
                          {"token": token.strip(), "csr": _csr(key).decode()})
        return _store(paths, key, answer, ca_pem, renewed=False)
    finally:
        pinned.unlink(missing_ok=True)


def renewal_due(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """True once two thirds of ``cert``'s validity have passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (now or dt.datetime.now(dt.UTC)) >= start + (end - start) * 2 / 3


def renew(hub_url: str, identity_dir: Path, *, force: bool = False,
          now: dt.datetime | None = None) -> Enrolled | None:
    """Renew if due (or ``force``); ``None`` when not due yet. Raises
    :class:`CertificateExpired` if the certificate has expired."""
    paths = TerminalIdentityPaths(Path(identity_dir))
    cert = load_certificate(paths.cert)
    at = now or dt.datetime.now(dt.UTC)
    if at > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"the terminal's certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
            "it cannot renew itself; ask the hub for a new token (ykt hub enroll) and run "
            "ykt enroll --hub URL --token TOKEN")
    if not force and not renewal_due(cert, at):
        return None
    old_key = load_private_key(paths.key)
    key = ec.generate_private_key(ec.SECP256R1())
    csr_pem = _csr(key)
    csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    answer = _request(f"{hub_url.rstrip('/')}/v1/renew", _verified(paths.ca), {
        "certificate": paths.cert.read_text(), "csr": csr_pem.decode(),
        "signature": base64.b64encode(sign(old_key, csr_der)).decode()})
    return _store(paths, key, answer, None, renewed=True)
