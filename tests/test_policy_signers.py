"""Signer roots (docs/policy.md "Signer roots and key rotation"): several rotations
delivered in one envelope, each checked against its predecessor; ``threshold > 1`` for
manifests and rotations, a key counted once however often it signs; and a rotated root
that survives a restart of the daemon, which then refuses the retired key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.policy.errors import BundleRefused, Refusal
from agent.policy.manifest import Signature
from agent.policy.signing import SigningKey, sign_document
from simulator.broker import Mosquitto
from sync.hub.policy import BundleSources
from tests.fixtures.policy import CHANNEL, PolicyEnv, PolicyTerminal
from tests.policy_daemon import PolicyDaemon, publish_envelope


def _ready(env: PolicyEnv, name: str = "T1") -> PolicyTerminal:
    """A terminal that applied v1, signed under root #1."""
    t = env.terminal(name)
    if env.repo.version == 0:
        env.build(env.population_sources())
    assert t.applier.offer(env.repo.latest_envelope(), None) is not None
    assert t.applier.trusted_root().serial == 1
    return t


def _next_version(env: PolicyEnv, signer: SigningKey) -> bytes:
    """The next version (a hotlist delta), built and signed by ``signer``."""
    victim = env.pop.tagged("standard")[env.repo.version]
    env.key = signer
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": victim.card_id}]),
                            merge=True))
    return env.repo.latest_envelope()


def _edit(payload: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(payload)
    change(doc)
    return json.dumps(doc).encode()


def _signed_by(payload: bytes, signatures: list[Signature]) -> bytes:
    """``payload`` with its manifest carrying exactly ``signatures``."""
    def put(doc: dict[str, Any]) -> None:
        doc["manifest"]["signatures"] = [s.model_dump() for s in signatures]
    return _edit(payload, put)


def _manifest_signatures(payload: bytes, keys: list[SigningKey]) -> list[Signature]:
    return sign_document(json.loads(payload)["manifest"]["signed"], keys)


def _refused(t: PolicyTerminal, payload: bytes, reason: Refusal) -> BundleRefused:
    with pytest.raises(BundleRefused) as exc:
        t.applier.offer(payload, None)
    assert exc.value.refusal is reason, exc.value
    return exc.value


# -- several rotations at once ------------------------------------------------------------

def test_two_rotations_in_one_envelope_walk_from_the_anchor(policy_env: PolicyEnv) -> None:
    """Root #1 → #2 → #3 while the terminal was away: one envelope carries both
    rotations; the terminal walks them and trusts #3, whose key alone signed v2."""
    env = policy_env
    t = _ready(env)
    k1, k2, k3 = env.key, SigningKey.generate(), SigningKey.generate()
    env.repo.rotate([k1], [k2.public])
    env.repo.rotate([k2], [k3.public])
    v2 = _next_version(env, k3)
    carried = json.loads(v2)["roots"]
    assert [r["signed"]["serial"] for r in carried] == [2, 3]
    # rotations listed newest first are walked all the same (sorted by serial)
    assert t.applier.offer(_edit(v2, lambda d: d["roots"].reverse()), None) is not None
    assert t.store.info.version == 2
    assert t.applier.trusted_root().serial == 3
    # a terminal provisioned with #1 that never applied anything walks the same chain
    fresh = env.terminal("T2")
    assert fresh.applier.offer(v2, None) is not None
    assert fresh.applier.trusted_root().serial == 3
    # the keys of #1 and #2 are retired: neither signs v3 any more
    v3 = _next_version(env, k3)
    for retired in (k1, k2):
        _refused(t, _signed_by(v3, _manifest_signatures(v3, [retired])),
                 Refusal.UNKNOWN_SIGNER)
    assert t.applier.offer(v3, None) is not None and t.store.info.version == 3


def test_each_rotation_must_be_signed_by_its_predecessor(policy_env: PolicyEnv) -> None:
    """#3 signed by #1's key (not #2's) breaks the chain, as does a missing link; the
    terminal keeps v1 and root #1."""
    env = policy_env
    t = _ready(env)
    k1, k2, k3 = env.key, SigningKey.generate(), SigningKey.generate()
    env.repo.rotate([k1], [k2.public])
    env.repo.rotate([k1], [k3.public])          # skips #2's keys: not a valid rotation
    skipped = _next_version(env, k3)
    err = _refused(t, skipped, Refusal.UNKNOWN_SIGNER)
    assert "root rotation #3" in err.detail
    (env.repo.roots_dir / "3.json").unlink()
    env.repo.rotate([k2], [k3.public])          # now properly cross-signed
    good = _next_version(env, k3)
    gap = _edit(good, lambda d: d.update(roots=d["roots"][1:]))      # #3 without #2
    assert "does not follow" in _refused(t, gap, Refusal.UNKNOWN_SIGNER).detail
    assert t.store.info.version == 1 and t.applier.trusted_root().serial == 1
    assert t.applier.offer(good, None) is not None
    assert t.applier.trusted_root().serial == 3


# -- threshold > 1 ------------------------------------------------------------------------

def test_threshold_two_for_manifests_and_rotations(policy_env: PolicyEnv) -> None:
    """Root #2 has three keys and threshold 2: one signature is refused, the same key
    twice is still one, a stranger's does not count; exactly two distinct keys apply.
    Its successor needs two of them as well."""
    env = policy_env
    t = _ready(env)
    a, b, c = (SigningKey.generate() for _ in range(3))
    env.repo.rotate([env.key], [a.public, b.public, c.public], threshold=2)
    v2 = _next_version(env, a)                  # the hub signs with ``a`` alone
    assert len(json.loads(v2)["manifest"]["signatures"]) == 1
    err = _refused(t, v2, Refusal.BAD_SIGNATURE)
    assert "1 valid signature(s)" in err.detail and "needs 2" in err.detail
    twice = _manifest_signatures(v2, [a, a])     # two different ECDSA signatures, one key
    assert twice[0].sig != twice[1].sig
    _refused(t, _signed_by(v2, twice), Refusal.BAD_SIGNATURE)
    _refused(t, _signed_by(v2, _manifest_signatures(v2, [a, SigningKey.generate()])),
             Refusal.BAD_SIGNATURE)
    assert t.store.info.version == 1 and t.applier.trusted_root().serial == 1
    assert t.applier.offer(_signed_by(v2, _manifest_signatures(v2, [a, c])), None) is not None
    assert t.store.info.version == 2 and t.applier.trusted_root().serial == 2

    # rotation #2 → #3 signed by one key of #2 only (even twice) is refused
    d = SigningKey.generate()
    env.repo.rotate([b, b], [d.public])
    v3 = _next_version(env, d)
    err = _refused(t, v3, Refusal.BAD_SIGNATURE)
    assert "root rotation #3" in err.detail
    (env.repo.roots_dir / "3.json").unlink()
    env.repo.rotate([b, c], [d.public])
    v3 = _next_version(env, d)
    assert t.applier.offer(v3, None) is not None
    assert t.applier.trusted_root().serial == 3
    assert t.store.info.version == env.repo.version == 4      # v3 was built twice


# -- a rotated root survives a restart ----------------------------------------------------

def test_rotated_root_survives_a_daemon_restart(policy_env: PolicyEnv, broker: Mosquitto,
                                                tmp_path: Path) -> None:
    """The daemon applies v2 under root #2, is restarted (its anchor file still names
    #1), and then refuses v3 signed by the retired key of #1 — with or without the
    rotation in the envelope — while a v3 signed by #2's key applies."""
    env = policy_env
    old, new = env.key, SigningKey.generate()
    env.build(env.population_sources())
    env.repo.rotate([old], [new.public])
    v2 = _next_version(env, new)
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        publish_envelope(broker, v2)
        daemon.wait_version(2)
        assert daemon.applier.trusted_root().serial == 2
    finally:
        daemon.stop()

    v3 = _next_version(env, new)

    def as_root1(doc: dict[str, Any]) -> None:   # an old-style bundle: no rotation carried
        doc["manifest"]["signed"]["root_serial"] = 1
        doc["roots"] = []
    retired_only = _edit(v3, as_root1)
    retired_only = _signed_by(retired_only, _manifest_signatures(retired_only, [old]))
    with_rotation = _signed_by(v3, _manifest_signatures(v3, [old]))
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    try:
        assert daemon.terminal.store is not None
        assert daemon.terminal.store.info.version == 2
        assert daemon.applier.anchor.serial == 1
        assert daemon.applier.trusted_root().serial == 2        # from the store, not the file
        for forged in (retired_only, with_rotation):
            publish_envelope(broker, forged)
            daemon.wait_state("refused", "unknown_signer")
            assert daemon.terminal.store.info.version == 2
            publish_envelope(broker, v2)        # the applied one again: a state to leave
            daemon.wait_state("applied")
        publish_envelope(broker, v3)
        daemon.wait_version(3)
        assert daemon.status()["policy"] == f"{CHANNEL}@3"
    finally:
        daemon.stop()
