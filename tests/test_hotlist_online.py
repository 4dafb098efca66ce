"""Online hotlist deltas (issue 12 item 7): signed by a delegated online key that may sign
hotlist deltas only, on their own topic and version line; replays refused; a full bundle
built before a loss report never undoes it, one built after it takes it over."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.model import Reason
from agent.policy.errors import BundleRefused, Refusal
from agent.policy.manifest import Envelope, PartRef, SignedManifest, sha256_hex
from agent.policy.online import OnlineHotlist
from agent.policy.signing import SigningKey, sign_document
from profiles import profile_path
from simulator.broker import Mosquitto
from simulator.population import Population
from sync.downlink import Downlink
from sync.hub.hotlist import HotlistChange, channels, publish_change
from sync.hub.policy import BundleSources
from sync.link import MqttSettings
from sync.session import BrokerSession
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import CHANNEL, PSEUDO, PolicyEnv


class Sent:
    """A publisher that keeps what it was given, per topic."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[bytes]] = {}

    def __call__(self, topic: str, payload: bytes) -> None:
        self.by_topic.setdefault(topic, []).append(payload)

    def last(self) -> bytes:
        return self.by_topic[f"ykt/v1/online/{CHANNEL}/hotlist"][-1]


def _delegate(env: PolicyEnv) -> SigningKey:
    hot = SigningKey.generate()
    env.repo.rotate([env.key], [env.key.public], hotlist_keys=[hot.public])
    return hot


def _change(env: PolicyEnv, hot: SigningKey, sent: Sent, action: str, card: str) -> None:
    publish_change(env.repo.root, HotlistChange(action, card), signer=hot,  # type: ignore[arg-type]
                   pseudonymizer=PSEUDO, publish=sent, now=env.clock())


def test_loss_report_in_force_until_a_build_takes_it_over(policy_env: PolicyEnv) -> None:
    env = policy_env
    hot, sent = _delegate(env), Sent()
    env.build(env.population_sources())
    term = env.terminal()
    term.applier.offer(env.repo.latest_envelope())
    online = OnlineHotlist(term.applier, clock=env.clock)
    victim = env.pop.tagged("standard")[0]
    assert term.tap(victim).decision.accepted
    # offline bundles signed before the loss report (they do not list the card); the
    # terminal gets only the second: a snapshot, a new store generation
    ents = [{"ssn": h.ssn, "name": c} for h in env.pop for c in h.categories]
    env.build(BundleSources(entitlements=env.source("ent", ents[:-1])))
    before = env.build(BundleSources(entitlements=env.source("ent", ents[:-2])))
    stale_offline = before.envelope_path.read_bytes()

    _change(env, hot, sent, "add", victim.card_id)
    assert channels(env.repo.root) == [CHANNEL]
    assert online.offer(sent.last()) == 1
    assert term.tap(victim).decision.reason == Reason.HOTLISTED
    assert online.offer(sent.last()) is None                 # the retained one again: no-op
    assert victim.card_id not in json.dumps(json.loads(sent.last()))   # hashed at the hub

    online.note_offline(stale_offline)      # as the Downlink does before each offer
    assert term.applier.offer(stale_offline).mode == "snapshot"   # built before the report
    assert term.store.info.version == 3
    assert term.tap(victim).decision.reason == Reason.HOTLISTED

    _change(env, hot, sent, "add", env.pop.tagged("standard")[1].card_id)
    first, second = sent.by_topic[f"ykt/v1/online/{CHANNEL}/hotlist"]
    assert online.offer(second) == 2
    with pytest.raises(BundleRefused) as err:
        online.offer(first)                                    # a replayed older one
    assert err.value.refusal is Refusal.ROLLBACK

    taken_over = env.build(BundleSources())                   # the build takes both over
    assert taken_over.totals["hotlist"] == 3
    online.note_offline(taken_over.envelope_path.read_bytes())
    term.applier.offer(taken_over.envelope_path.read_bytes())
    assert json.loads(online.path.read_text())["adds"] == []  # included: no longer kept
    assert term.tap(victim).decision.reason == Reason.HOTLISTED

    _change(env, hot, sent, "remove", victim.card_id)         # found again
    assert online.offer(sent.last()) == 3
    assert term.tap(victim).decision.accepted


def _hot_signed(env: PolicyEnv, hot: SigningKey, signed: dict[str, object],
                inline: dict[str, bytes]) -> bytes:
    return Envelope(manifest=SignedManifest(signed=signed, signatures=sign_document(signed,
                                                                                    [hot])),
                    roots=[r for r in env.repo.roots() if r.signatures],
                    inline={k: base64.b64encode(v).decode() for k, v in inline.items()}
                    ).to_bytes()


def test_online_key_signs_hotlist_deltas_only(policy_env: PolicyEnv, broker: Mosquitto) -> None:
    env = policy_env
    hot, sent = _delegate(env), Sent()
    env.build(env.population_sources())
    term = env.terminal()
    term.applier.offer(env.repo.latest_envelope())
    downlink = Downlink(term.applier, settings=MqttSettings(host=broker.host, port=broker.port))
    downlink.start()
    try:
        _change(env, hot, sent, "add", env.pop.tagged("standard")[0].card_id)
        good = json.loads(sent.last())
        signed = dict(good["manifest"]["signed"], sequence=9)
        rules = env.repo.parts_dir / next(p for p in json.loads(env.repo.latest_envelope())
                                          ["manifest"]["signed"]["parts"]
                                          if p["kind"] == "rules")["sha256"]
        body = rules.read_bytes()
        signed["parts"] = [*signed["parts"], PartRef(
            name="rules/bus_validator", kind="rules", sha256=sha256_hex(body), size=len(body),
            inline=True).model_dump(mode="json")]
        inline = {k: base64.b64decode(v) for k, v in good["inline"].items()}
        downlink.offer_online(_hot_signed(env, hot, signed, {**inline,
                                                              sha256_hex(body): body}))
        wait_until(lambda: downlink.online.refused == 1, 10, "the refusal")
        status = downlink.status()
        assert status["hotlist_refusal"] == "outside_role"
        assert "rules/bus_validator" in status["hotlist_refusal_detail"]
        assert status["hotlist_online"] == 0

        # a full offline manifest signed by the online key: refused on both paths
        full = json.loads(env.build(BundleSources(), renew=True).envelope_path.read_bytes())
        forged = _hot_signed(env, hot, full["manifest"]["signed"],
                             {k: base64.b64decode(v) for k, v in full["inline"].items()})
        with pytest.raises(BundleRefused) as err:
            term.applier.offer(forged)
        assert err.value.refusal is Refusal.UNKNOWN_SIGNER
        with pytest.raises(BundleRefused) as err:
            downlink.online.offer(forged)
        assert err.value.refusal is Refusal.OUTSIDE_ROLE
        # a delta signed by the offline key is not an online manifest either
        offline_signed = _hot_signed(env, env.key, good["manifest"]["signed"], inline)
        with pytest.raises(BundleRefused) as err:
            downlink.online.offer(offline_signed)
        assert err.value.refusal is Refusal.UNKNOWN_SIGNER
    finally:
        downlink.stop()


def test_undelegated_key_refused_at_the_hub(policy_env: PolicyEnv) -> None:
    env = policy_env
    env.build(env.population_sources())
    with pytest.raises(PermissionError, match="not the online hotlist key"):
        _change(env, SigningKey.generate(), Sent(), "add", env.pop.holders[0].card_id)
    with pytest.raises(ValueError, match="卡识别码, 32 hex"):
        HotlistChange("add", "6217-0000")


def test_cli_rotate_hotlist_key_and_add(tmp_path: Path, broker: Mosquitto,
                                       capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YKT_MQTT_HOST", raising=False)
    repo, key, hot = tmp_path / "repo", tmp_path / "ops.pem", tmp_path / "hot.pem"
    assert main(["hub", "policy", "keygen", "--out", str(key), "--repo", str(repo)]) == 0
    assert main(["hub", "policy", "keygen", "--out", str(hot)]) == 0
    assert main(["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL, "--key",
                 str(key), "--rules", str(profile_path("bus_validator")), "--demo-key"]) == 0
    rot = ["hub", "policy", "rotate", "--repo", str(repo), "--channel", CHANNEL, "--old-key",
           str(key), "--json"]
    assert main([*rot, "--hotlist-key", str(hot)]) == 0
    capsys.readouterr()
    card = Population.generate(5, seed=3).holders[0].card_id
    add = ["hub", "hotlist", "add", card, "--repo", str(repo), "--key", str(hot), "--demo-key"]
    assert main(add) == 2
    assert "no broker" in capsys.readouterr().err
    assert main(["hub", "hotlist", "add", "12345", "--repo", str(repo), "--key", str(hot),
                 "--demo-key", "--mqtt-host", broker.host]) == 2
    assert "卡识别码" in capsys.readouterr().err
    assert main(["hub", "hotlist", "add", card, "--repo", str(repo), "--key", str(key),
                 "--demo-key", "--mqtt-host", broker.host, "--mqtt-port",
                 str(broker.port)]) == 1               # the offline key is not the online one
    assert "not the online hotlist key" in capsys.readouterr().err
    assert main([*add, "--mqtt-host", broker.host, "--mqtt-port", str(broker.port),
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert card not in out
    assert json.loads(out)["published"] == {CHANNEL: 1}
    with BrokerSession(MqttSettings(host=broker.host, port=broker.port), "") as s:
        s.connect()
        s.subscribe(f"ykt/v1/online/{CHANNEL}/hotlist")
        [(_, payload)] = s.wait_message(1)
    assert json.loads(payload)["manifest"]["signed"]["sequence"] == 1


def test_a_failed_online_apply_is_retried(policy_env: PolicyEnv, broker: Mosquitto,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The retained message is not delivered again: a store that is busy once must not
    leave the card unlisted until the next report."""
    import sqlite3

    env = policy_env
    hot, sent = _delegate(env), Sent()
    env.build(env.population_sources())
    term = env.terminal()
    term.applier.offer(env.repo.latest_envelope())
    downlink = Downlink(term.applier, settings=MqttSettings(host=broker.host, port=broker.port),
                        retry_min_s=0.05)
    write, calls = downlink.online._write, []

    def busy_once(adds: list[list[str]], removes: list[str]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        write(adds, removes)
    monkeypatch.setattr(downlink.online, "_write", busy_once)
    downlink.start()
    try:
        victim = env.pop.tagged("standard")[0]
        _change(env, hot, sent, "add", victim.card_id)
        downlink.offer_online(sent.last())
        assert downlink.online.wait_applied(1, timeout=10)
        assert len(calls) == 2 and downlink.status()["hotlist_refusal"] == ""
        assert term.tap(victim).decision.reason == Reason.HOTLISTED
    finally:
        downlink.stop()
