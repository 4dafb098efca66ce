"""The signed policy manifest, the signer root, and the MQTT envelope that carries them.

Everything signed is canonical JSON (:func:`agent.journal.canonical`): keys sorted, no whitespace,
UTF-8, integers and strings only (no floats), so the hub and every terminal hash the same
bytes. The wire form on ``ykt/v1/policy/{channel}/manifest`` is an :class:`Envelope`::

    {"manifest": {"signed": {…Manifest…}, "signatures": [{"kid", "alg", "sig"}]},
     "roots":    [{"signed": {…Root…},     "signatures": […]}, …],   # rotations, oldest first
     "inline":   {"<sha256>": "<base64>", …}}                       # small parts

Only ``signed`` objects are trusted, after their signatures verify; ``inline`` bytes are
trusted only because the signed manifest names their hash. See ``docs/policy.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.journal import canonical, parse_utc
from agent.names import validate_channel
from agent.policy.errors import BundleRefused, Refusal
from agent.store import PolicyInfo


def _utc(v: str) -> str:
    parse_utc(v)            # ValueError: not RFC 3339 UTC
    return v


Channel = Annotated[str, AfterValidator(validate_channel)]
"""A policy channel name, validated (:func:`agent.names.validate_channel`)."""
UtcStamp = Annotated[str, AfterValidator(_utc)]
"""An RFC 3339 UTC time stamp, checked to parse."""

__all__ = [
    "MANIFEST_TYPE",
    "MAX_ENVELOPE_BYTES",
    "ROOT_TYPE",
    "DeltaBase",
    "Envelope",
    "KeyEntry",
    "Manifest",
    "PartRef",
    "Root",
    "Signature",
    "SignedManifest",
    "SignedRoot",
    "sha256_hex",
    "signed_bytes",
]

MANIFEST_TYPE = "ykt-policy-manifest"
ROOT_TYPE = "ykt-policy-root"
PartKind = Literal["entitlements", "hotlist", "rules", "issuers", "settings", "site",
                   "reservations", "calendar"]
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_INT64 = 2**63 - 1          # SQLite's INTEGER: a larger number could never be stored

MAX_ENVELOPE_BYTES = 512 * 1024
"""The largest envelope a terminal parses (bytes): 192 KiB of inline parts are 256 KiB
of base64, plus the signed manifest and root rotations. Larger payloads are refused
``malformed`` before any parsing."""


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def signed_bytes(signed: dict[str, Any], what: str = "manifest") -> bytes:
    """The canonical bytes a signature covers. Raises :class:`BundleRefused`
    (``malformed``) when ``signed`` has no canonical form (a float such as a version of
    ``3.0``, a lone surrogate in a string): such a document can never carry a valid
    signature, and the refusal is final rather than retried."""
    try:
        return canonical(signed)
    except (ValueError, RecursionError) as err:   # UnicodeEncodeError is a ValueError
        raise BundleRefused(Refusal.MALFORMED, f"{what}: no canonical form: "
                            f"{type(err).__name__}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyEntry(_Strict):
    """A public key allowed to sign manifests."""

    kid: str = Field(min_length=1, max_length=64, description="key id (hex of SPKI hash)")
    alg: str = Field("ES256", description="ES256 (default), EdDSA or SM2")
    public_key: str = Field(description="PEM SubjectPublicKeyInfo")


class Root(_Strict):
    """The set of keys that sign manifests (TUF's root role). Serial 1 is provisioned on
    terminals (the trust anchor); serial n+1 must be signed by serial n's keys."""

    type: Literal["ykt-policy-root"] = "ykt-policy-root"
    serial: int = Field(ge=1, le=_INT64)
    threshold: int = Field(1, ge=1, le=1000, description="distinct valid signatures required")
    keys: list[KeyEntry] = Field(min_length=1)
    hotlist_keys: list[KeyEntry] = Field(
        default_factory=list, description="online keys that may sign hotlist deltas only "
        "(agent.policy.online); one valid signature suffices")

    def key(self, kid: str) -> KeyEntry | None:
        return next((k for k in self.keys if k.kid == kid), None)


class PartRef(_Strict):
    """One content-addressed part named by a manifest."""

    name: str = Field(description="slot: entitlements, entitlements.delta, hotlist, "
                                  "hotlist.delta, rules/<profile>, issuers, settings, "
                                  "site, reservations, calendar")
    kind: PartKind
    mode: Literal["snapshot", "delta", "file"] = "file"
    sha256: str
    size: int = Field(ge=0, le=_INT64, description="bytes")
    rows: int = Field(0, ge=0, le=_INT64, description="data lines (entitlements/hotlist parts)")
    inline: bool = Field(False, description="carried in the envelope (small parts)")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return v


class DeltaBase(_Strict):
    """The applied version a delta's parts transform into this version."""

    version: int = Field(ge=0, le=_INT64)
    hash: str


class Manifest(_Strict):
    """The signed description of one policy version of one channel."""

    type: Literal["ykt-policy-manifest"] = "ykt-policy-manifest"
    channel: Channel
    version: int = Field(ge=1, le=_INT64, description="increases with every publication")
    created: UtcStamp = Field(description="RFC 3339 UTC")
    expires: UtcStamp = Field(description="RFC 3339 UTC; terminals report policy-stale after it")
    root_serial: int = Field(ge=1, le=_INT64,
                             description="the signer root whose keys sign this")
    base_url: str = Field("", description="where non-inline parts are served: base_url + sha256")
    delta_from: DeltaBase | None = None
    totals: dict[str, int] = Field(default_factory=dict,
                                   description="rows after apply: entitlements, hotlist")
    parts: list[PartRef]
    online_through: int = Field(0, ge=0, le=_INT64, description="the online hotlist "
                                "sequence whose changes this version includes")

    def part(self, name: str) -> PartRef | None:
        return next((p for p in self.parts if p.name == name), None)

    @property
    def expires_at(self) -> float:
        return parse_utc(self.expires)


class Signature(_Strict):
    kid: str
    alg: str = "ES256"
    sig: str = Field(description="base64 of the raw signature (r||s for EC)")

    def raw(self) -> bytes:
        try:
            return base64.b64decode(self.sig, validate=True)
        except (binascii.Error, ValueError):
            return b""


class SignedManifest(_Strict):
    signed: dict[str, Any]
    signatures: list[Signature] = Field(default_factory=list)

    def digest(self) -> str:
        """The manifest hash: hex SHA-256 of the canonical JSON of ``signed``.
        Raises :class:`BundleRefused` (``malformed``, see :func:`signed_bytes`)."""
        return sha256_hex(signed_bytes(self.signed))


class SignedRoot(_Strict):
    signed: dict[str, Any]
    signatures: list[Signature] = Field(default_factory=list)


class Envelope(_Strict):
    """What travels on the manifest topic (retained)."""

    manifest: SignedManifest
    roots: list[SignedRoot] = Field(default_factory=list)
    inline: dict[str, str] = Field(default_factory=dict, description="sha256 → base64 bytes")

    @classmethod
    def parse(cls, payload: bytes) -> Envelope:
        """Parse the wire bytes. Raises :class:`BundleRefused` (``malformed``), also for
        more than :data:`MAX_ENVELOPE_BYTES` or JSON nested too deep."""
        if len(payload) > MAX_ENVELOPE_BYTES:
            raise BundleRefused(Refusal.MALFORMED, f"envelope of {len(payload)} bytes exceeds "
                                f"{MAX_ENVELOPE_BYTES}")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as err:
            raise BundleRefused(Refusal.MALFORMED,
                                f"envelope: {err.error_count()} error(s): "
                                f"{err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_defaults=False).encode()

    def digest(self) -> str:
        """The manifest hash (see :meth:`SignedManifest.digest`)."""
        return self.manifest.digest()

    def policy_info(self, manifest: Manifest | None = None) -> PolicyInfo:
        """The :class:`PolicyInfo` a terminal stores once this bundle is applied.
        ``manifest`` is :meth:`manifest_model` if already parsed (verify it first!).
        Raises :class:`BundleRefused` (``malformed``)."""
        m = manifest or self.manifest_model()
        return PolicyInfo(m.channel, m.version, self.digest(), m.expires)

    def manifest_model(self) -> Manifest:
        """The manifest (unverified!). Raises :class:`BundleRefused` (``malformed``)."""
        try:
            return Manifest.model_validate(self.manifest.signed)
        except ValidationError as err:
            raise BundleRefused(Refusal.MALFORMED,
                                f"manifest: {err.errors()[0]['loc']}: "
                                f"{err.errors()[0]['msg']}") from None

    def inline_bytes(self, sha: str) -> bytes | None:
        """Decoded inline part ``sha`` or None. Raises :class:`BundleRefused` (malformed)."""
        text = self.inline.get(sha)
        if text is None:
            return None
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BundleRefused(Refusal.MALFORMED, f"inline part {sha[:12]} is not base64"
                                ) from None
