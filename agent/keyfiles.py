"""Writing key and certificate files safely: atomically (a temporary file in the same
directory, fsynced, renamed over the old one) and created with their final mode, never
wider first. Used by the terminal's enrollment (:mod:`agent.enroll`) and the hub CA
(:mod:`sync.hub.ca`), so both sides of the trust contract write their files one way.

Errors: ``OSError`` from the file system (a missing or read-only directory, a full disk).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.identity import PrivateKey, PublicKey

__all__ = ["write_file", "write_private_key", "write_public"]


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (e.g. ``0o600``); the
    parent directories are made when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """``key`` as unencrypted PKCS#8 PEM, mode 0600."""
    write_file(path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)


def write_public(path: Path, item: x509.Certificate | x509.CertificateRevocationList
                 | PublicKey, mode: int = 0o644) -> None:
    """A certificate, CRL or public key (SubjectPublicKeyInfo) as PEM, mode ``mode``."""
    if isinstance(item, (x509.Certificate, x509.CertificateRevocationList)):
        data = item.public_bytes(serialization.Encoding.PEM)
    else:
        data = item.public_bytes(serialization.Encoding.PEM,
                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    write_file(path, data, mode)
