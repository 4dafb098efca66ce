"""Why a policy bundle was refused or could not be applied.

::

    PolicyError (RuntimeError)            .refusal: Refusal
     ├── BundleRefused                    a bad or hostile bundle: never retried as is
     └── ApplyFailed                      a good bundle that could not be applied yet
          │                               (network, disk, interrupted apply): retried
          └── SnapshotDeferred            a snapshot waits for the end of the busy hours

Every refusal keeps the policy the terminal already has; the reason is one of
:class:`Refusal`, reported in the status heartbeat and the logs.
"""

from __future__ import annotations

import enum

from agent.errors import YktError

__all__ = ["ApplyFailed", "BundleRefused", "PolicyError", "Refusal", "SnapshotDeferred"]


class Refusal(enum.StrEnum):
    """Stable reason codes (logged, reported in the status heartbeat)."""

    MALFORMED = "malformed"
    """The envelope, manifest or a part does not parse or breaks the format."""
    UNSIGNED = "unsigned"
    """The manifest carries no signature at all."""
    UNKNOWN_SIGNER = "unknown_signer"
    """Signed, but by no key of the trusted signer root (also: a forged root rotation)."""
    BAD_SIGNATURE = "bad_signature"
    """Signed by a trusted key id, but the signature does not verify (tampered manifest)."""
    WRONG_CHANNEL = "wrong_channel"
    """A valid manifest of another channel (mix-and-match across channels)."""
    ROLLBACK = "rollback"
    """Older than (or conflicting with) the applied version."""
    EXPIRED = "expired"
    """The manifest is past its expiry (freeze attack): not applied, policy goes stale."""
    MIX_AND_MATCH = "mix_and_match"
    """A part not named by the manifest, or of the wrong kind for its slot."""
    PART_HASH_MISMATCH = "part_hash_mismatch"
    """A part's bytes do not match the size and SHA-256 the manifest names (tampered)."""
    VECTORS_FAILED = "vectors_failed"
    """A rule set of the bundle is invalid or its test vectors fail."""
    BASE_MISMATCH = "base_mismatch"
    """A delta does not apply to what the store holds (handled by taking the snapshot)."""
    FETCH_FAILED = "fetch_failed"
    """A part could not be downloaded (retried with backoff)."""
    APPLY_FAILED = "apply_failed"
    """Staging or switching failed or was interrupted (retried with backoff)."""
    OUTSIDE_ROLE = "outside_role"
    """Signed by the online hotlist key but carrying more than a hotlist delta (rules,
    entitlements, an offline manifest): that key may sign hotlist changes only."""
    DEFERRED = "deferred"
    """A snapshot waits for the end of the configured busy hours (retried then)."""


class PolicyError(YktError, RuntimeError):
    """A bundle was not applied; ``refusal`` says why, ``detail`` says where."""

    retryable = False

    def __init__(self, refusal: Refusal, detail: str = "") -> None:
        super().__init__(f"{refusal.value}: {detail}" if detail else refusal.value)
        self.refusal = refusal
        self.detail = detail


class BundleRefused(PolicyError):
    """A bad or hostile bundle: the terminal keeps its policy and does not retry it."""


class ApplyFailed(PolicyError):
    """A good bundle that could not be applied now; the old policy stays; retried."""

    retryable = True


class SnapshotDeferred(ApplyFailed):
    """A snapshot not started because of the busy hours (:mod:`agent.policy.schedule`):
    retried after ``retry_after_s`` seconds, or at once when a newer manifest comes."""

    def __init__(self, retry_after_s: float, detail: str = "") -> None:
        super().__init__(Refusal.DEFERRED, detail)
        self.retry_after_s = retry_after_s
