"""The policy publisher's upload: an envelope built and signed offline is verified at the
hub against the terminals' trust anchor and published retained; a tampered, old or
viewer's upload is refused by the server and audit-logged. The hub never holds the
offline signing key (``envelope_publisher`` reads only the repository's roots)."""

from __future__ import annotations

import json
from pathlib import Path

from simulator.broker import Mosquitto
from sync.hub.web_console import envelope_publisher
from sync.link import MqttSettings
from sync.topics import policy_manifest
from tests.fixtures.console import make_site
from tests.fixtures.hub import Listener, wait_until
from tests.fixtures.policy import PolicyEnv


def test_publisher_uploads_an_offline_signed_bundle(policy_env: PolicyEnv, broker: Mosquitto,
                                                    tmp_path: Path) -> None:
    env = policy_env
    built = env.build(env.population_sources())
    envelope = built.envelope_path.read_bytes()
    settings = MqttSettings(host=broker.host, port=broker.port)
    # the hub's copy of the repository: its roots only, no key, no versions
    hub_repo = tmp_path / "hub-repo"
    (hub_repo / "roots").mkdir(parents=True)
    (hub_repo / "roots" / "1.json").write_bytes((env.repo.roots_dir / "1.json").read_bytes())
    server, site = make_site(tmp_path / "site")
    site.config.publish = envelope_publisher(hub_repo, settings, site.accounts)
    topic = str(policy_manifest(env.repo.channel))
    listener = Listener(broker)
    try:
        listener.subscribe(topic)
        viewer = site.client()
        assert viewer.login("vera") == 303
        token = viewer.csrf("/console/policy")
        status, _, _ = viewer.upload("/console/policy/publish", {"csrf": token,
                                     "reason": "weekly"}, "envelope", "1.json", envelope)
        assert status == 403

        pub = site.client()
        assert pub.login("pia") == 303
        token = pub.csrf("/console/policy")
        doc = json.loads(envelope)
        doc["manifest"]["signed"]["expires"] = "2099-01-01T00:00:00.000Z"     # tampered
        status, text, _ = pub.upload("/console/policy/publish", {"csrf": token, "reason":
                                     "weekly"}, "envelope", "1.json", json.dumps(doc).encode())
        assert status == 400 and "not a bundle the terminals would take" in text
        status, text, _ = pub.upload("/console/policy/publish", {"reason": "weekly"},
                                     "envelope", "1.json", envelope)
        assert status == 403 and "CSRF" in text

        status, _, headers = pub.upload("/console/policy/publish", {"csrf": token, "reason":
                                        "weekly rollout"}, "envelope", "1.json", envelope)
        assert status == 303 and f"published={env.repo.channel}@1" in headers["location"]
        wait_until(lambda: listener.got(topic) == [envelope], 10, "the retained manifest")
        status, text, _ = pub.upload("/console/policy/publish", {"csrf": token, "reason":
                                     "again"}, "envelope", "1.json", envelope)
        assert status == 400 and "not newer" in text

        log = site.accounts.audit_log(action="policy_publish")
        assert [(e.user, e.outcome.split(":")[0]) for e in log] == [
            ("pia", "refused"), ("pia", "ok"), ("pia", "refused"), ("vera", "refused")]
        assert log[1].reason == "weekly rollout" and log[1].outcome == \
            f"ok: {env.repo.channel}@1"
    finally:
        listener.client.loop_stop()
        listener.client.disconnect()
        server.stop()
        site.store.close()
        site.accounts.close()
