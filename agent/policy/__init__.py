"""Signed, versioned policy bundles (entitlements, hotlist, rules, issuer keys, settings).

* :mod:`agent.policy.manifest` — the manifest, signer root and envelope formats;
* :mod:`agent.policy.signing` — keys, signing, TUF-style verification;
* :mod:`agent.policy.parts` — the entitlements/hotlist part format;
* :mod:`agent.policy.stage` — writing a verified bundle into the store (atomic);
* :mod:`agent.policy.apply` — the terminal's apply pipeline (:class:`PolicyApplier`);
* :mod:`agent.policy.runners` — where a staged apply runs (a child process by default);
* :mod:`agent.policy.compaction` — the background overlay merge (:class:`Compactor`).

The format and threat model are in ``docs/policy.md``.
"""

from agent.policy.errors import ApplyFailed, BundleRefused, PolicyError, Refusal

# The applier is imported from agent.policy.apply (not re-exported here, so that
# ``python -m agent.policy.stage`` runs without importing itself twice).
__all__ = ["ApplyFailed", "BundleRefused", "PolicyError", "Refusal"]
