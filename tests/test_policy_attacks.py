"""The TUF threat model: each attack is refused with its own reason, and the terminal
keeps deciding with the policy it had."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.journal import canonical, parse_utc
from agent.model import Reason
from agent.policy.apply import SubprocessRunner
from agent.policy.errors import BundleRefused, Refusal
from agent.policy.manifest import Envelope, Root, sha256_hex
from agent.policy.signing import SigningKey, sign_document, signed_root
from agent.policy.stage import ApplyPlan
from simulator.broker import Mosquitto
from sync.downlink import Downlink
from sync.hub.policy import BundleSources
from sync.link import MqttSettings
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import PolicyEnv, PolicyTerminal

BAD_RULES = """
[profile]
name = "bus_validator"
kind = "bus_validator"

[[rule]]
id = "everyone-free"
accept = "accepted"
product = "free"

[[vector]]
name = "hotlisted cards are refused"
time = 2026-11-25T08:00:00+08:00
hotlisted = true
expect_reason = "hotlisted"
"""


def _ready(env: PolicyEnv) -> PolicyTerminal:
    t = env.terminal()
    env.build(env.population_sources())
    assert t.applier.offer(env.repo.latest_envelope(), None) is not None
    return t


def _victim_delta(env: PolicyEnv) -> bytes:
    """A legitimate next version (v2) that hotlists a standard-fare card."""
    victim = env.pop.tagged("standard")[0]
    env.build(BundleSources(hotlist=env.source("hot", [{"card_id": victim.card_id}]),
                            merge=True))
    return env.repo.latest_envelope()


def _mutate(payload: bytes, *, manifest: Callable[[dict[str, Any]], None] | None = None,
            resign: SigningKey | None = None,
            envelope: Callable[[dict[str, Any]], None] | None = None) -> bytes:
    doc = json.loads(payload)
    if manifest is not None:
        manifest(doc["manifest"]["signed"])
    if resign is not None:
        doc["manifest"]["signatures"] = [s.model_dump() for s in sign_document(
            doc["manifest"]["signed"], [resign])]
    if envelope is not None:
        envelope(doc)
    return json.dumps(doc).encode()


def _still_deciding_with_v1(env: PolicyEnv, t: PolicyTerminal) -> None:
    assert t.store.info.version == 1
    out = t.tap(env.pop.tagged("standard")[0])
    assert out.decision.accepted and out.decision.product == "standard"
    assert out.record is not None and out.record.body["policy"] == "city/370302/bus@1"


def _refused(t: PolicyTerminal, payload: bytes, reason: Refusal) -> BundleRefused:
    with pytest.raises(BundleRefused) as exc:
        t.applier.offer(payload, None)
    assert exc.value.refusal is reason, exc.value
    return exc.value


def test_unsigned_unknown_signer_and_tampered_manifest(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    _refused(t, _mutate(good, envelope=lambda d: d["manifest"].update(signatures=[])),
             Refusal.UNSIGNED)
    _refused(t, _mutate(good, resign=SigningKey.generate()), Refusal.UNKNOWN_SIGNER)
    _refused(t, _mutate(good, manifest=lambda m: m.update(expires="2099-01-01T00:00:00Z")),
             Refusal.BAD_SIGNATURE)
    _refused(t, b"{not json", Refusal.MALFORMED)
    _still_deciding_with_v1(env, t)
    assert t.applier.offer(good, None) is not None   # the genuine one still applies
    assert t.store.info.version == 2


def test_rollback_is_refused(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    v1 = env.repo.latest_envelope()
    v2 = _victim_delta(env)
    t.applier.offer(v2, None)
    _refused(t, v1, Refusal.ROLLBACK)
    assert t.store.info.version == 2


def test_freeze_expired_manifest_refused_and_stale_policy_reported(policy_env: PolicyEnv
                                                                   ) -> None:
    env = policy_env
    t = _ready(env)
    v2 = _victim_delta(env)
    manifest = json.loads(v2)["manifest"]["signed"]
    env.clock.t = parse_utc(manifest["expires"]) + 60      # a week later, nothing new came
    _refused(t, v2, Refusal.EXPIRED)
    assert t.store.info.version == 1
    out = t.tap(env.pop.tagged("standard")[0])
    assert out.decision.accepted            # bus_validator: stale_policy = keep_deciding
    assert out.record is not None and out.record.body.get("policy_stale") is True


def test_mix_and_match_and_wrong_channel(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    stray = b"#ykt-part v1 hotlist delta\n"
    _refused(t, _mutate(good, envelope=lambda d: d["inline"].update(
        {sha256_hex(stray): base64.b64encode(stray).decode()})), Refusal.MIX_AND_MATCH)

    def swap_kind(m: dict[str, Any]) -> None:     # a hotlist delta put in the entitlements slot
        for p in m["parts"]:
            if p["name"] == "hotlist.delta":
                p["name"], p["kind"] = "entitlements.delta", "entitlements"
    _refused(t, _mutate(good, manifest=swap_kind, resign=env.key), Refusal.MIX_AND_MATCH)
    _refused(t, _mutate(good, manifest=lambda m: m.update(channel="city/370302/scenic"),
                        resign=env.key), Refusal.WRONG_CHANNEL)
    _still_deciding_with_v1(env, t)


def test_tampered_parts_inline_and_http(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = env.terminal()
    env.build(env.population_sources())
    snapshot = next(p for p in json.loads(env.repo.latest_envelope())["manifest"]["signed"]
                    ["parts"] if p["name"] == "entitlements")
    # force the snapshot over HTTP and tamper with the served file
    def all_http(m: dict[str, Any]) -> None:
        for p in m["parts"]:
            p["inline"] = False
    payload = _mutate(env.repo.latest_envelope(), envelope=lambda d: d.update(inline={}),
                      manifest=all_http, resign=env.key)
    served = env.repo.parts_dir / snapshot["sha256"]
    original = served.read_bytes()
    served.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    from sync.downlink import HttpPartFetcher
    fetcher = HttpPartFetcher(backoff_s=0)
    with pytest.raises(BundleRefused) as exc:
        t.applier.offer(payload, fetcher)
    assert exc.value.refusal is Refusal.PART_HASH_MISMATCH
    assert t.store.info.version == 0
    served.write_bytes(original)
    assert t.applier.offer(payload, fetcher) is not None
    good = _victim_delta(env)
    doc = json.loads(good)
    sha = next(iter(doc["inline"]))
    data = base64.b64decode(doc["inline"][sha])
    doc["inline"][sha] = base64.b64encode(data[:-1] + bytes([data[-1] ^ 1])).decode()
    _refused(t, json.dumps(doc).encode(), Refusal.PART_HASH_MISMATCH)
    _still_deciding_with_v1(env, t)


def test_rules_whose_vectors_fail_are_refused(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    ref = env.repo._file_part("rules/bus_validator", "rules", BAD_RULES.encode())
    old = [p["sha256"] for p in json.loads(good)["manifest"]["signed"]["parts"]
           if p["name"] == "rules/bus_validator"][0]

    def bad_rules(m: dict[str, Any]) -> None:
        for p in m["parts"]:
            if p["name"] == "rules/bus_validator":
                p.update(sha256=ref.sha256, size=ref.size, inline=True)

    def swap_inline(d: dict[str, Any]) -> None:
        d["inline"].pop(old, None)
        d["inline"][ref.sha256] = base64.b64encode(BAD_RULES.encode()).decode()
    payload = _mutate(good, manifest=bad_rules, resign=env.key, envelope=swap_inline)
    _refused(t, payload, Refusal.VECTORS_FAILED)
    _still_deciding_with_v1(env, t)
    assert t.tap(env.pop.tagged("hotlisted")[0]).decision.reason is Reason.HOTLISTED


def test_key_rotation_signed_by_the_old_key(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    new = SigningKey.generate()
    env.repo.rotate([env.key], [new.public])
    old_key, env.key = env.key, new
    good = _victim_delta(env)                     # v2, signed by the new key only
    assert t.applier.offer(good, None) is not None
    assert t.applier.trusted_root().serial == 2
    # the retired key can no longer sign
    env.key = old_key
    with pytest.raises(PermissionError):
        _victim_delta(env)
    stale = _mutate(good, manifest=lambda m: m.update(version=3), resign=old_key)
    _refused(t, stale, Refusal.UNKNOWN_SIGNER)


def test_forged_rotation_is_refused(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    mallory = SigningKey.generate()
    forged = signed_root(Root(serial=2, keys=[mallory.public]), [mallory])

    def add_root(d: dict[str, Any]) -> None:
        d["roots"] = [json.loads(forged.model_dump_json())]
    payload = _mutate(good, manifest=lambda m: m.update(root_serial=2), resign=mallory,
                      envelope=add_root)
    _refused(t, payload, Refusal.UNKNOWN_SIGNER)
    _still_deciding_with_v1(env, t)
    assert canonical({"a": 1}) == b'{"a":1}'
    assert Envelope.parse(good).manifest_model().version == 2


def test_hostile_root_serial_is_malformed_and_not_retried(policy_env: PolicyEnv,
                                                          broker: Mosquitto) -> None:
    """A root rotation whose serial is not a number is refused as ``malformed`` (before
    any sorting by serial), once: the downlink does not retry it, the terminal keeps v1.

    The downlink retries without any pause here, so a refused bundle it wrongly kept
    would be offered again at once, over and over; the genuine v2 sent after the refusal
    is then the positive signal: the worker offered exactly the hostile bundle, then v2."""
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    hostile = _mutate(good, envelope=lambda d: d["roots"].append(
        {"signed": {"type": "ykt-policy-root", "serial": "abc", "keys": []},
         "signatures": []}))
    _refused_once_then_v2(env, broker, t, hostile, good)
    assert t.store.info.version == 2


def test_rules_that_are_not_utf8_are_malformed(policy_env: PolicyEnv) -> None:
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    bad = b"\xff\xfe not UTF-8"
    old = [p["sha256"] for p in json.loads(good)["manifest"]["signed"]["parts"]
           if p["name"] == "rules/bus_validator"][0]

    def bad_rules(m: dict[str, Any]) -> None:
        for p in m["parts"]:
            if p["name"] == "rules/bus_validator":
                p.update(sha256=sha256_hex(bad), size=len(bad), inline=True)

    def swap_inline(d: dict[str, Any]) -> None:
        d["inline"].pop(old, None)
        d["inline"][sha256_hex(bad)] = base64.b64encode(bad).decode()
    _refused(t, _mutate(good, manifest=bad_rules, resign=env.key, envelope=swap_inline),
             Refusal.MALFORMED)
    _still_deciding_with_v1(env, t)


def test_unknown_refusal_code_from_the_apply_process_is_malformed(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"error\": \"no-such-reason\", \"detail\": \"x\"}'\n"
                    "exit 4\n")
    fake.chmod(0o755)
    plan = ApplyPlan(store=str(tmp_path / "store.db"), mode="snapshot",
                     info={"channel": "c", "version": 1, "hash": "h", "expires": ""})
    with pytest.raises(BundleRefused) as exc:
        SubprocessRunner(python=str(fake)).run(plan)
    assert exc.value.refusal is Refusal.MALFORMED and exc.value.detail == "x"


def test_float_manifest_version_is_malformed_and_not_retried(policy_env: PolicyEnv,
                                                             broker: Mosquitto) -> None:
    """Found by fuzzing: ``"version": 2.0`` passed the manifest model (2.0 == 2) and then
    had no canonical form, so the signature check raised ``ValueError``: the downlink
    took it for a failed apply and retried it forever. Now it is refused ``malformed``,
    once; the genuine v2 offered after it is the positive signal that nothing was retried
    (the downlink retries without a pause here)."""
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    hostile = _mutate(good, manifest=lambda m: m.update(version=2.0))
    _refused_once_then_v2(env, broker, t, hostile, good)


def test_a_staged_part_damaged_on_disk_is_fetched_again(policy_env: PolicyEnv) -> None:
    """A part staged by an earlier attempt and damaged on disk since (same size, other
    bytes: the gzip stream then fails inside zlib) is checked again and replaced, so the
    genuine bundle applies instead of failing on every attempt."""
    env = policy_env
    t = _ready(env)
    good = _victim_delta(env)
    ref = next(p for p in json.loads(good)["manifest"]["signed"]["parts"]
               if p["name"] == "hotlist.delta")
    damaged = bytearray(base64.b64decode(json.loads(good)["inline"][ref["sha256"]]))
    damaged[12:-8] = bytes(b ^ 0x5A for b in damaged[12:-8])
    (t.applier.staging / ref["sha256"]).write_bytes(bytes(damaged))
    assert t.applier.offer(good, None) is not None
    assert t.store.info.version == 2


def _refused_once_then_v2(env: PolicyEnv, broker: Mosquitto, t: Any, hostile: bytes,
                          good: bytes) -> None:
    """Through a real downlink that retries without a pause: ``hostile`` is refused
    ``malformed`` exactly once (never retried), the terminal keeps deciding with v1, and
    the genuine ``good`` v2 offered after it is the next and last offer, applied."""
    _refused(t, hostile, Refusal.MALFORMED)
    offers: list[bytes] = []
    offer = t.applier.offer

    def counting(payload: bytes, fetcher: Any = None) -> Any:
        offers.append(payload)
        return offer(payload, fetcher)
    t.applier.offer = counting  # type: ignore[method-assign]
    down = Downlink(t.applier, settings=MqttSettings(host=broker.host, port=broker.port),
                    client_id="T1-policy", retry_min_s=0.0, retry_max_s=0.0)
    down.start()
    try:
        down.offer(hostile)
        wait_until(lambda: down.status()["policy_state"] == "refused", 10, "the refusal")
        assert down.status()["policy_refusal"] == "malformed"
        _still_deciding_with_v1(env, t)
        down.offer(good)
        wait_until(lambda: down.status()["policy_state"] == "applied", 10, "v2 applied")
        assert offers == [hostile, good]
    finally:
        down.stop()
