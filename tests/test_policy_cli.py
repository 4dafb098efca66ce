"""``ykt hub policy keygen | build | publish`` end to end (the fleet: tests/test_fleet.py)."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.policy.apply import InProcessRunner, PolicyApplier
from agent.policy.errors import BundleRefused, Refusal
from agent.policy.signing import SigningKey, load_root
from agent.store import PolicyStore
from profiles import profile_path
from simulator.broker import Mosquitto
from simulator.population import Population
from tests.fixtures.policy import CHANNEL


def test_keygen_build_publish(tmp_path: Path, broker: Mosquitto,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YKT_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    repo, key = tmp_path / "repo", tmp_path / "ops.pem"
    assert main(["hub", "policy", "keygen", "--out", str(key), "--repo", str(repo),
                 "--json"]) == 0
    anchor = json.loads(capsys.readouterr().out)["anchor"]
    assert key.stat().st_mode & 0o777 == 0o600
    pop = Population.generate(30, seed=2)
    ents = tmp_path / "ents.csv"
    with open(ents, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ssn", "name"])
        w.writerows([h.ssn, c] for h in pop for c in h.categories)
    hot = tmp_path / "hot.jsonl"
    hot.write_text("".join(json.dumps({"card_id": h.card_id, "reason": "lost"}) + "\n"
                           for h in pop if h.hotlisted), encoding="utf-8")
    assert main(["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL,
                 "--key", str(key), "--entitlements", str(ents), "--hotlist", str(hot),
                 "--rules", str(profile_path("bus_validator")), "--demo-key", "--publish",
                 "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["version"] == 1 and built["published"]
    assert built["totals"]["hotlist"] == 1
    store = PolicyStore(tmp_path / "t" / "store.db")
    try:
        applier = PolicyApplier(store, channel=CHANNEL,
                                anchor=load_root(Path(anchor).read_bytes()),
                                runner=InProcessRunner())
        envelope = (repo / "channels" / CHANNEL / "versions" / "1.json").read_bytes()
        assert applier.offer(envelope) is not None
        assert store.info.hash == built["hash"]
    finally:
        store.close()
    assert main(["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL,
                 "--key", str(key), "--hotlist", str(ents)]) == 2   # no pseudonym key
    assert "pseudonymisation key" in capsys.readouterr().err


def test_sm2_keygen_build_sign_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``keygen --alg SM2`` (tongsuopy keys), then a bundle signed with it verifies and
    applies; a tampered one does not."""
    pytest.importorskip("tongsuopy")
    monkeypatch.delenv("YKT_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    repo, key = tmp_path / "repo", tmp_path / "sm2.pem"
    assert main(["hub", "policy", "keygen", "--alg", "SM2", "--out", str(key), "--repo",
                 str(repo), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["alg"] == "SM2"
    signer = SigningKey.load(key, "SM2")
    der = base64.b64decode("".join(made["public_key"].strip().splitlines()[1:-1]))
    assert made["kid"] == signer.public.kid == hashlib.sha256(der).hexdigest()[:16]
    assert signer.public is signer.public                   # computed once, not per sign()
    ents = tmp_path / "ents.csv"
    ents.write_text("ssn,name\n370102195001011233,elderly\n", encoding="utf-8")
    assert main(["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL,
                 "--key", str(key), "--alg", "SM2", "--entitlements", str(ents),
                 "--rules", str(profile_path("bus_validator")), "--demo-key", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    envelope = (repo / "channels" / CHANNEL / "versions" / "1.json").read_bytes()
    signed = json.loads(envelope)["manifest"]
    assert [(s["kid"], s["alg"]) for s in signed["signatures"]] == [(made["kid"], "SM2")]
    anchor = load_root((repo / "roots" / "1.json").read_bytes())
    store = PolicyStore(tmp_path / "t" / "store.db")
    try:
        applier = PolicyApplier(store, channel=CHANNEL, anchor=anchor,
                                runner=InProcessRunner())
        tampered = json.loads(envelope)
        tampered["manifest"]["signed"]["expires"] = "2099-01-01T00:00:00Z"
        with pytest.raises(BundleRefused) as exc:
            applier.offer(json.dumps(tampered).encode())
        assert exc.value.refusal is Refusal.BAD_SIGNATURE
        assert applier.offer(envelope) is not None
        assert store.info.hash == built["hash"] and store.info.version == 1
    finally:
        store.close()
