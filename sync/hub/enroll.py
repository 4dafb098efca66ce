"""Enrollment on the hub's side: one-time tokens, and certificates for CSRs.

``ykt hub enroll TERMINAL`` makes a token ``ykt1.{ca-fingerprint}.{secret}``: the
fingerprint (SHA-256 of the hub CA certificate, hex) lets the terminal trust the hub
before it has the CA; the secret (32 random bytes, base64url) is what proves the holder
may enroll as ``TERMINAL``. Only the token's SHA-256 is stored
(``enroll/{sha256}.json``, mode 0600, with the terminal, its channels and the expiry), so
the identity directory never holds a usable token; :func:`redeem` deletes the file before
it issues anything, so a token works once even when two requests race.

A renewal (:func:`renew`) needs no token: the terminal proves it holds the key of its
current, unexpired, unrevoked certificate by signing the CSR of its new key with it.

Errors are :class:`EnrollmentRefused` with a message fit for the client; it never
contains the token.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.errors import YktError
from agent.identity import IdentityError, public_key_from_cert, verify
from agent.names import validate_channel, validate_terminal_id
from sync.hub.ca import HubCA

__all__ = ["TOKEN_PREFIX", "EnrollmentRefused", "Issued", "issue_token", "redeem", "renew",
           "token_fingerprint"]

TOKEN_PREFIX = "ykt1"
DEFAULT_TTL_S = 24 * 3600


class EnrollmentRefused(YktError):
    """An enrollment or renewal was refused (bad, used or expired token; bad CSR; …)."""


@dataclass(frozen=True)
class Issued:
    """What a terminal receives: its certificate, the CA and the hub's signing key (PEM)."""

    terminal: str
    certificate: bytes
    ca: bytes
    hub_signing_pub: bytes
    channels: list[str] = field(default_factory=list)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_dir(ca: HubCA) -> Path:
    d = ca.paths.dir / "enroll"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def token_fingerprint(token: str) -> str:
    """The CA fingerprint a token carries. ``ValueError`` if it is not a token."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[1]) != 64:
        raise ValueError("not an enrollment token (ykt1.<fingerprint>.<secret>)")
    int(parts[1], 16)
    return parts[1]


def issue_token(ca: HubCA, terminal: str, channels: Iterable[str] = (), *,
                ttl_s: float = DEFAULT_TTL_S, now: float | None = None) -> tuple[str, float]:
    """A new one-time token for ``terminal`` and its expiry (Unix seconds)."""
    validate_terminal_id(terminal)
    chans = sorted({validate_channel(c) for c in channels})
    if ca.is_revoked(terminal):
        raise EnrollmentRefused(f"terminal {terminal} is revoked; enroll it under a new id")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    token = f"{TOKEN_PREFIX}.{ca.fingerprint}.{secret}"
    expires = (time.time() if now is None else now) + ttl_s
    path = _token_dir(ca) / f"{_hash(token)}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"terminal": terminal, "channels": chans, "expires": expires}, f)
    return token, expires


def _bundle(ca: HubCA, terminal: str, cert: x509.Certificate, channels: list[str]) -> Issued:
    return Issued(terminal, cert.public_bytes(serialization.Encoding.PEM),
                  ca.cert.public_bytes(serialization.Encoding.PEM),
                  ca.paths.signing_pub.read_bytes(), channels)


def _csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError:
        raise EnrollmentRefused("the CSR is not a PEM certificate signing request") from None


def redeem(ca: HubCA, token: str, csr_pem: bytes, *, now: float | None = None) -> Issued:
    """Use ``token`` once: sign the CSR (CN must be the token's terminal), record the
    certificate in ``terminals/`` and return what the terminal stores."""
    try:
        if token_fingerprint(token) != ca.fingerprint:
            raise EnrollmentRefused("the token is for another hub CA")
    except ValueError:
        raise EnrollmentRefused("not an enrollment token") from None
    path = _token_dir(ca) / f"{_hash(token)}.json"
    claimed = path.with_suffix(f".used-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, claimed)          # atomic: only one request can claim a token
    except FileNotFoundError:
        raise EnrollmentRefused("unknown or already used enrollment token") from None
    try:
        entry = json.loads(claimed.read_text())
    finally:
        claimed.unlink()
    if (time.time() if now is None else now) > float(entry["expires"]):
        raise EnrollmentRefused("the enrollment token has expired; ask for a new one")
    terminal, channels = entry["terminal"], list(entry["channels"])
    if ca.is_revoked(terminal):
        raise EnrollmentRefused(f"terminal {terminal} is revoked")
    try:
        cert = ca.sign_csr(_csr(csr_pem), terminal)
    except IdentityError as err:
        raise EnrollmentRefused(str(err)) from None
    ca.record_terminal(terminal, cert)
    (ca.paths.dir / "terminals" / f"{terminal}.channels").write_text(
        "".join(c + "\n" for c in channels))
    return _bundle(ca, terminal, cert, channels)


def renew(ca: HubCA, cert_pem: bytes, csr_pem: bytes, signature: bytes, *,
          now: dt.datetime | None = None) -> Issued:
    """A new certificate for a terminal that proves it holds its current one's key:
    ``signature`` is that key's over the CSR's DER bytes."""
    try:
        current = x509.load_pem_x509_certificate(cert_pem)
        current.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise EnrollmentRefused("the certificate was not issued by this hub") from None
    at = now or dt.datetime.now(dt.UTC)
    if not current.not_valid_before_utc <= at <= current.not_valid_after_utc:
        raise EnrollmentRefused("the certificate has expired: re-enroll with a new token")
    cns = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    terminal = str(cns[0].value) if cns else ""
    if not ca.paths.terminal_cert(terminal).exists() or ca.is_revoked(terminal):
        raise EnrollmentRefused(f"terminal {terminal or '?'} is not enrolled or is revoked")
    csr = _csr(csr_pem)
    if not verify(public_key_from_cert(current), signature,
                  csr.public_bytes(serialization.Encoding.DER)):
        raise EnrollmentRefused("the renewal is not signed with the current certificate's key")
    try:
        cert = ca.sign_csr(csr, terminal)
    except IdentityError as err:
        raise EnrollmentRefused(str(err)) from None
    ca.record_terminal(terminal, cert)
    chan_file = ca.paths.dir / "terminals" / f"{terminal}.channels"
    channels = chan_file.read_text().split() if chan_file.exists() else []
    return _bundle(ca, terminal, cert, channels)

