"""Signing keys and the TUF-style verification of manifests and signer-root rotations.

Algorithms come from :mod:`agent.codes.algorithms`: ES256 by default, EdDSA, and
SM2-with-SM3 when ``tongsuopy`` is installed. A key id is the first 16 hex digits of the
SHA-256 of the DER SubjectPublicKeyInfo.

:func:`verify_envelope` walks the root chain from the terminal's trusted root (each
rotation must be signed by the previous root's keys, up to its threshold), then checks
the manifest's signatures against the resulting root. Errors are :class:`BundleRefused`
with ``unsigned``, ``unknown_signer``, ``bad_signature`` or ``malformed`` (also for a
document with no canonical form, e.g. a float version: refused, never retried).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.codes.algorithms import AlgorithmUnavailable, KeyFormatError, algorithm
from agent.journal import canonical
from agent.policy.errors import BundleRefused, Refusal
from agent.policy.manifest import (
    Envelope,
    KeyEntry,
    Manifest,
    Root,
    Signature,
    SignedManifest,
    SignedRoot,
    signed_bytes,
)

__all__ = ["SigningKey", "hotlist_role", "key_id", "load_root", "sign_document",
           "verify_envelope", "verify_signed", "walk_roots"]


def key_id(public_pem: bytes | str) -> str:
    """The key id of a PEM SubjectPublicKeyInfo (as exported by
    :meth:`agent.codes.algorithms.SignatureAlgorithm.public_pem`, any algorithm):
    16 hex digits of SHA-256(SPKI DER). Raises ``ValueError`` if it is not PEM."""
    text = public_pem.decode("ascii") if isinstance(public_pem, bytes) else public_pem
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" \
            or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueError("not a PEM public key (SubjectPublicKeyInfo)")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error as err:
        raise ValueError(f"PEM public key body is not base64: {err}") from None
    return hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """An operations signing key (private). Keep the PEM file 0600, off terminals."""

    alg: str
    private_key: Any

    @classmethod
    def generate(cls, alg: str = "ES256") -> SigningKey:
        """A new key. Raises ``ValueError``/``AlgorithmUnavailable`` for an unknown/absent alg."""
        a = algorithm(alg)
        return cls(a.name, a.generate())

    @classmethod
    def load(cls, path: str | Path, alg: str = "ES256") -> SigningKey:
        """Load a private PEM. Raises ``OSError`` or ``ValueError`` naming the file."""
        a = algorithm(alg)
        try:
            return cls(a.name, a.load_private_pem(Path(path).read_bytes()))
        except KeyFormatError as err:
            raise ValueError(f"{path}: not a {a.name} private key: {err}") from err

    def save(self, path: str | Path) -> None:
        """Write the private PEM with mode 0600 (created exclusively: never overwrites)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(algorithm(self.alg).private_pem(self.private_key))

    @cached_property
    def public(self) -> KeyEntry:
        """The public half (kid, alg, PEM), computed once."""
        a = algorithm(self.alg)
        pem = a.public_pem(a.public_key(self.private_key))
        return KeyEntry(kid=key_id(pem), alg=a.name, public_key=pem.decode())

    def sign(self, data: bytes) -> Signature:
        raw = algorithm(self.alg).sign(self.private_key, data)
        return Signature(kid=self.public.kid, alg=self.alg, sig=base64.b64encode(raw).decode())


def sign_document(signed: dict[str, Any], keys: list[SigningKey]) -> list[Signature]:
    """Signatures of ``keys`` over the canonical bytes of ``signed``."""
    data = canonical(signed)
    return [k.sign(data) for k in keys]


def verify_signed(signed: dict[str, Any], signatures: list[Signature], root: Root,
                  what: str) -> None:
    """Require ``root.threshold`` distinct valid signatures by ``root``'s keys.

    Raises :class:`BundleRefused`: ``unsigned`` (no signatures), ``unknown_signer`` (no
    signature by a key of ``root``), ``bad_signature`` (a trusted key's signature fails),
    ``malformed`` (``signed`` has no canonical form: :func:`signed_bytes`).
    """
    if not signatures:
        raise BundleRefused(Refusal.UNSIGNED, f"{what} carries no signature")
    data = signed_bytes(signed, what)
    good: set[str] = set()
    known = False
    for s in signatures:
        entry = root.key(s.kid)
        if entry is None or entry.alg != s.alg:
            continue
        known = True
        try:
            a = algorithm(entry.alg)
            pub = a.load_public_pem(entry.public_key.encode())
        except (AlgorithmUnavailable, KeyFormatError, ValueError) as err:
            raise BundleRefused(Refusal.UNKNOWN_SIGNER,
                                f"{what}: trusted key {s.kid} unusable: {err}") from None
        if a.verify(pub, s.raw(), data):
            good.add(s.kid)
    if not known:
        kids = ",".join(s.kid for s in signatures)
        raise BundleRefused(Refusal.UNKNOWN_SIGNER,
                            f"{what} signed by {kids}, none in signer root #{root.serial}")
    if len(good) < root.threshold:
        raise BundleRefused(Refusal.BAD_SIGNATURE,
                            f"{what}: {len(good)} valid signature(s), root #{root.serial} "
                            f"needs {root.threshold}")


def _root_of(sr: SignedRoot) -> Root:
    try:
        return Root.model_validate(sr.signed)
    except ValidationError as err:
        raise BundleRefused(Refusal.MALFORMED, f"root: {err.errors()[0]['msg']}") from None


def walk_roots(env: Envelope, trusted: Root) -> Root:
    """The newest root reachable from ``trusted`` through the envelope's rotations (each
    signed by its predecessor). Raises :class:`BundleRefused`."""
    root = trusted
    chain = sorted(((_root_of(sr), sr) for sr in env.roots), key=lambda c: c[0].serial)
    for candidate, sr in chain:
        if candidate.serial <= root.serial:
            continue                    # already trusted (or older): ignore
        if candidate.serial != root.serial + 1:
            raise BundleRefused(Refusal.UNKNOWN_SIGNER,
                                f"root #{candidate.serial} does not follow #{root.serial}")
        verify_signed(sr.signed, sr.signatures, root, f"root rotation #{candidate.serial}")
        root = candidate
    return root


def hotlist_role(root: Root) -> Root:
    """The online hotlist role of ``root`` as a root of its own (its ``hotlist_keys``,
    threshold 1), for :func:`verify_signed`. Raises :class:`BundleRefused`
    (``unknown_signer``) when ``root`` delegates no hotlist key."""
    if not root.hotlist_keys:
        raise BundleRefused(Refusal.UNKNOWN_SIGNER,
                            f"signer root #{root.serial} delegates no online hotlist key")
    return Root(serial=root.serial, threshold=1, keys=root.hotlist_keys)


def verify_envelope(env: Envelope, trusted: Root) -> tuple[Manifest, Root]:
    """Verify the root chain from ``trusted`` and the manifest signatures (by the root's
    offline ``keys``; its online ``hotlist_keys`` never count here).

    Returns the (verified) manifest and the root that signed it (newer than ``trusted``
    after a rotation; persist it only once the bundle is applied). Raises
    :class:`BundleRefused`.
    """
    root = walk_roots(env, trusted)
    manifest = env.manifest_model()
    verify_signed(env.manifest.signed, env.manifest.signatures, root,
                  f"manifest {manifest.channel}@{manifest.version}")
    if manifest.root_serial != root.serial:
        raise BundleRefused(Refusal.UNKNOWN_SIGNER,
                            f"manifest names signer root #{manifest.root_serial}, "
                            f"verified chain ends at #{root.serial}")
    return manifest, root


def load_root(data: bytes | str, source: str = "<root>") -> Root:
    """A :class:`Root` from JSON (a bare root object or ``{"signed": …}``). Raises
    ``ValueError`` naming ``source``."""
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and "signed" in doc:
            doc = doc["signed"]
        return Root.model_validate(doc)
    except (json.JSONDecodeError, ValidationError) as err:
        raise ValueError(f"{source}: not a policy signer root: {err}") from None


def signed_manifest(manifest: Manifest, keys: list[SigningKey]) -> SignedManifest:
    """Sign ``manifest`` with ``keys`` (hub side)."""
    signed = manifest.model_dump(mode="json")
    if not signed.get("online_through"):
        signed.pop("online_through", None)      # versions without online changes: as before
    return SignedManifest(signed=signed, signatures=sign_document(signed, keys))


def signed_root(root: Root, keys: list[SigningKey]) -> SignedRoot:
    """Sign a root rotation with the previous root's ``keys`` (hub side). An empty
    ``hotlist_keys`` is left out, so roots without an online key keep their old form."""
    signed = root.model_dump(mode="json", exclude_defaults=False)
    if not signed.get("hotlist_keys"):
        signed.pop("hotlist_keys", None)
    return SignedRoot(signed=signed, signatures=sign_document(signed, keys))
