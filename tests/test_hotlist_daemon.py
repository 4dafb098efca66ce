"""挂失联动 end to end: a bank's loss-reporting system posts a lost card to the hub's
endpoint (Starlette on uvicorn, TLS), the hub publishes an online hotlist delta through a
real Mosquitto, and a running terminal daemon refuses that card, within 5 s."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from agent.model import Reason
from agent.policy.signing import SigningKey
from simulator.broker import Mosquitto, free_port
from sync.hub.ca import HubCA
from sync.hub.hotlist import mqtt_publisher
from sync.hub.hotlist_http import HotlistEndpoint, hotlist_routes
from sync.hub.web import EnrollmentServer
from sync.link import MqttSettings
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import PSEUDO, PolicyEnv
from tests.fixtures.tls_broker import TlsBroker
from tests.test_daemon_policy import _tap, _terminal

TOKEN = "t" * 40


def _post(url: str, ctx: ssl.SSLContext, body: dict[str, str], token: str | None) -> tuple[
        int, dict[str, object]]:
    req = urllib.request.Request(url + "/v1/hotlist", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bank_reports_a_loss_and_the_running_terminal_refuses_the_card(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path) -> None:
    env = policy_env
    hot = SigningKey.generate()
    env.repo.rotate([env.key], [env.key.public], hotlist_keys=[hot.public])
    settings = MqttSettings(host=broker.host, port=broker.port)
    env.build(env.population_sources())
    env.repo.publish(settings)
    ca = HubCA.init(tmp_path / "hub")
    web = EnrollmentServer(ca, "127.0.0.1", free_port(), routes=hotlist_routes(HotlistEndpoint(
        env.repo.root, hot, PSEUDO, mqtt_publisher(settings), (TOKEN,))))
    web.start()
    ctx = ssl.create_default_context(cafile=str(ca.paths.ca_cert))
    terminal, cards, outcomes = _terminal(env, broker, tmp_path / "t")
    try:
        wait_until(lambda: terminal.store is not None and terminal.store.info.version == 1, 30,
                   "policy v1 to be applied")
        victim = env.pop.tagged("standard")[0]
        assert _tap(terminal, cards, outcomes, victim).decision.accepted
        status, body = _post(web.url, ctx, {"card": victim.card_id}, None)
        assert status == 401 and "Bearer" in str(body["error"])
        status, body = _post(web.url, ctx, {"card": "3.70302E+17"}, TOKEN)
        assert status == 400 and "卡识别码" in str(body["error"])

        status, body = _post(web.url, ctx, {"action": "add", "card": victim.card_id,
                                            "reason": "lost"}, TOKEN)
        assert status == 200 and body["published"] == {env.repo.channel: 1}
        assert terminal.downlink.online.wait_applied(1, timeout=5)
        out = _tap(terminal, cards, outcomes, victim)
        assert out.decision.reason is Reason.HOTLISTED
        assert terminal.status()["hotlist_online"] == 1
        assert terminal.store.info.version == 1           # the full bundle's line untouched
        # the raw card number is nowhere at the hub or the terminal
        for root in (env.repo.root, tmp_path / "t"):
            for f in root.rglob("*"):
                if f.is_file():
                    assert victim.card_id.encode() not in f.read_bytes(), f
    finally:
        terminal.stop()
        web.stop()


def test_ykt_hub_web_serves_the_loss_report_endpoint(policy_env: PolicyEnv,
                                                     tls_broker: TlsBroker,
                                                     tmp_path: Path) -> None:
    """The real command: ``ykt hub web --policy-repo R --hotlist-key K`` with API tokens
    from the environment serves ``POST /v1/hotlist`` and publishes through the mutual-TLS
    broker with the hub's certificate, inside the generated ACLs (PUBACK: ``published``)."""
    import os
    import subprocess
    import sys

    from simulator.process import stop_process
    from tests.fixtures.logguard import watch_stderr

    env = policy_env
    hot = SigningKey.generate()
    hot_pem = tmp_path / "hotlist.pem"
    hot.save(hot_pem)
    env.repo.rotate([env.key], [env.key.public], hotlist_keys=[hot.public])
    env.build(env.population_sources())
    port = free_port()
    err = tmp_path / "web.stderr"
    ident = tls_broker.ca.paths.dir
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "hub", "web", "--identity", str(ident),
             "--listen-port", str(port), "--host", "127.0.0.1",
             "--port", str(tls_broker.broker.port), "--offline",
             "--policy-repo", str(env.repo.root), "--hotlist-key", str(hot_pem)],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "YKT_HOTLIST_API_TOKENS": TOKEN,
                 "YKT_PSEUDONYM_KEY": PSEUDO._key.hex()})
    watch_stderr(err, "ykt hub web")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("hub web ready: https://127.0.0.1:"), err.read_text()
        url = line.split("ready: ", 1)[1].strip()
        ctx = ssl.create_default_context(cafile=str(tls_broker.ca.paths.ca_cert))
        victim = env.pop.tagged("standard")[0]
        assert _post(url, ctx, {"card": victim.card_id}, None)[0] == 401
        status, body = _post(url, ctx, {"action": "add", "card": victim.card_id,
                                        "reason": "lost"}, TOKEN)
        assert status == 200 and body["published"] == {env.repo.channel: 1}, body
    finally:
        code = stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
