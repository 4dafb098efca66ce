"""Every client speaks TLS and bounds its packets: :class:`sync.link.Link` over the broker
``ykt hub broker-config`` writes, with files from an identity directory or from
``$CREDENTIALS_DIRECTORY``, and MQTT 5 Maximum Packet Size both ways."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt_settings import AGENT_MAX_PACKET, BROKER_MAX_PACKET, MqttSettings
from simulator.broker import Mosquitto
from sync.link import Link, PacketTooLarge, publish_packet_size
from sync.session import BrokerSession
from sync.topics import Topic, TopicFilter
from tests.fixtures.tls_broker import TlsBroker


def _collect(link: Link, flt: str) -> tuple[list[bytes], threading.Event]:
    got: list[bytes] = []
    arrived = threading.Event()

    def handler(_topic: str, payload: bytes) -> None:
        got.append(payload)
        arrived.set()

    link.subscribe(TopicFilter(flt), handler)
    return got, arrived


def test_a_terminal_link_connects_with_its_identity_directory(tls_broker: TlsBroker) -> None:
    ident = tls_broker.root / "A"          # terminal.key/.crt from the hub CA
    shutil.copyfile(tls_broker.ca.paths.ca_cert, ident / "ca.crt")
    settings = MqttSettings(port=tls_broker.broker.port, reconnect_min_s=0.05,
                            reconnect_max_s=0.5, max_packet_size=AGENT_MAX_PACKET
                            ).with_identity(ident)
    assert settings.tls_cert_file == ident / "terminal.crt"
    link = Link(settings, "A")
    got, arrived = _collect(link, "ykt/v1/t/A/ack")
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.server_max_packet == BROKER_MAX_PACKET       # from the broker's CONNACK
        with BrokerSession(tls_broker.settings("hub"), "hub-1") as hub:
            hub.connect()
            assert hub.publish("ykt/v1/t/A/ack", b'{"v":1}') == 0
        assert arrived.wait(10) and got == [b'{"v":1}']
    finally:
        link.stop()


def test_tls_files_come_from_the_credentials_directory(tls_broker: TlsBroker, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cred = tmp_path / "credentials"
    cred.mkdir()
    shutil.copyfile(tls_broker.ca.paths.ca_cert, cred / "mqtt-ca.crt")
    shutil.copyfile(tls_broker.root / "B" / "terminal.crt", cred / "mqtt-client.crt")
    shutil.copyfile(tls_broker.root / "B" / "terminal.key", cred / "mqtt-client.key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    link = Link(MqttSettings(port=tls_broker.broker.port, reconnect_min_s=0.05,
                             reconnect_max_s=0.5), "B")
    assert link.settings.tls_key_file == cred / "mqtt-client.key"
    link.start()
    try:
        assert link.wait_connected(10)
        link.publish(Topic("ykt/v1/t/B/status"), b"{}").wait_for_publish(10)
    finally:
        link.stop()


@pytest.fixture
def small_broker(tmp_path: Path) -> Mosquitto:
    b = Mosquitto(workdir=tmp_path / "mosquitto", persistence=False)
    with open(b.conf, "a") as f:
        f.write("max_packet_size 4096\n")
    return b


def test_an_oversize_publish_is_refused_before_sending_and_keeps_the_connection(
        small_broker: Mosquitto) -> None:
    with small_broker:
        settings = MqttSettings(port=small_broker.port, reconnect_min_s=0.05,
                                reconnect_max_s=0.5)
        link = Link(settings, "t-big")
        got, arrived = _collect(link, "ykt/v1/t/x/tx")
        link.start()
        try:
            assert link.wait_connected(10)
            assert link.server_max_packet == 4096
            topic = Topic("ykt/v1/t/x/tx")
            fits = link.max_payload(topic)
            assert fits is not None and publish_packet_size(str(topic), fits) == 4096
            with pytest.raises(PacketTooLarge):
                link.publish(topic, b"x" * (fits + 1))
            link.publish(topic, b"y" * fits).wait_for_publish(10)
            assert arrived.wait(10) and got == [b"y" * fits]
            assert link.connects == 1           # never disconnected by the broker
        finally:
            link.stop()


def test_the_broker_sends_a_client_nothing_over_its_own_limit(broker: Mosquitto) -> None:
    settings = MqttSettings(port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.5,
                            max_packet_size=2048)
    link = Link(settings, "t-small")
    got, _ = _collect(link, "ykt/v1/t/x/ack")
    last = threading.Event()
    link.subscribe(TopicFilter("ykt/v1/t/x/cmd"), lambda _t, _p: last.set())
    link.start()
    try:
        assert link.wait_connected(10)
        with BrokerSession(MqttSettings(port=broker.port), "pub") as pub:
            pub.connect()
            pub.publish("ykt/v1/t/x/ack", b"a" * 4000)
            pub.publish("ykt/v1/t/x/ack", b"small")
            pub.publish("ykt/v1/t/x/cmd", b"later")
        assert last.wait(10)         # a later message arrived: the big one was not delivered
        assert got == [b"small"]
        assert link.oversize_dropped == 0   # the broker kept it back; our guard never saw it
    finally:
        link.stop()


def test_a_message_over_the_limit_is_dropped_before_any_handler_parses_it() -> None:
    link = Link(MqttSettings(max_packet_size=1024), "t-guard")
    seen: list[bytes] = []
    link.subscribe(TopicFilter("ykt/v1/t/x/ack"), lambda _t, p: seen.append(p))
    for size in (5000, 10):
        msg = mqtt.MQTTMessage(topic=b"ykt/v1/t/x/ack")
        msg.payload = b"z" * size
        link._on_message(link._client, None, msg)
    assert seen == [b"z" * 10] and link.oversize_dropped == 1


def test_policy_publish_connects_with_an_operator_certificate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``ykt hub policy publish`` over mutual TLS with an operator identity; the terminal
    of that channel reads the retained manifest, over TLS too."""
    import json
    import os
    import tempfile

    from agent.cli import main
    from profiles import profile_path
    from tests.fixtures.policy import CHANNEL
    from tests.fixtures.tls_broker import make_tls_broker

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    outer = Path(tempfile.mkdtemp(prefix="ykt-tls-broker-"))
    os.chmod(outer, 0o755)
    tb = make_tls_broker(tmp_path / "tls", outer / "broker", {"A": CHANNEL})
    try:
        with tb.broker:
            repo, key = tmp_path / "repo", tmp_path / "ops.pem"
            assert main(["hub", "policy", "keygen", "--out", str(key), "--repo", str(repo),
                         "--json"]) == 0
            assert main(["hub", "policy", "build", "--repo", str(repo), "--channel", CHANNEL,
                         "--key", str(key), "--rules", str(profile_path("bus_validator")),
                         "--demo-key", "--json"]) == 0
            capsys.readouterr()
            a_cert = tb.settings("A")           # a terminal may not publish manifests
            assert main(["hub", "policy", "publish", "--repo", str(repo), "--channel", CHANNEL,
                         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(tb.broker.port), "--tls-ca", str(a_cert.tls_ca_file),
                         "--tls-cert", str(a_cert.tls_cert_file), "--tls-key",
                         str(a_cert.tls_key_file)]) == 1
            assert "refused the manifest (reason 0x87)" in capsys.readouterr().err
            op = tb.settings("operator")
            assert main(["hub", "policy", "publish", "--repo", str(repo), "--channel", CHANNEL,
                         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(tb.broker.port), "--tls-ca", str(op.tls_ca_file),
                         "--tls-cert", str(op.tls_cert_file), "--tls-key",
                         str(op.tls_key_file), "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["version"] == 1
            with BrokerSession(tb.settings("A"), "A") as a:
                a.connect()
                assert a.subscribe(f"ykt/v1/policy/{CHANNEL}/manifest") == 1
                [(topic, payload)] = a.wait_message(1)
                assert payload == (repo / "channels" / CHANNEL / "versions" / "1.json"
                                   ).read_bytes()
    finally:
        shutil.rmtree(outer, ignore_errors=True)
