"""MqttSettings and Link against a real Mosquitto."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from simulator.broker import Mosquitto
from sync.link import Link, MqttSettings, NotConnected
from sync.topics import Topic, TopicFilter
from tests.fixtures.hub import Listener, fast_settings, wait_until


def test_settings_defaults_are_documented_and_strict() -> None:
    s = MqttSettings()
    assert (s.host, s.port) == ("127.0.0.1", 1883)
    for name, field in MqttSettings.model_fields.items():
        assert field.description, f"field {name} has no description"
    with pytest.raises(ValidationError, match="password"):
        MqttSettings(password="secret")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="together"):
        MqttSettings(tls_ca_file=Path("ca.pem"), tls_cert_file=Path("c.pem"))
    with pytest.raises(ValidationError, match="reconnect_min_s"):
        MqttSettings(reconnect_min_s=10, reconnect_max_s=1)


def test_password_comes_from_env_or_credentials(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YKT_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    s = MqttSettings(username="bus-1")
    assert s.password() is None
    (tmp_path / "mqtt-password").write_text("from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert s.password() == "from-file"
    monkeypatch.setenv("YKT_MQTT_PASSWORD", "from-env")
    assert s.password() == "from-env"


def test_publish_while_disconnected_raises_instead_of_dropping(broker: Mosquitto) -> None:
    link = Link(fast_settings(broker), "t-disconnected")
    with pytest.raises(NotConnected):
        link.publish(Topic("ykt/v1/t/x/tx"), b"{}")
    link.stop()  # never started: harmless


@pytest.mark.expect_log("sync.link", r"callback failed \(link t-callbacks\); continuing")
def test_a_failing_callback_does_not_kill_the_loop(broker: Mosquitto,
                                                   listener: Listener) -> None:
    seen: list[bytes] = []

    def handler(topic: str, payload: bytes) -> None:
        seen.append(payload)
        raise RuntimeError("boom")

    link = Link(fast_settings(broker), "t-callbacks")
    link.subscribe(TopicFilter("test/+/x"), handler)
    link.start()
    link.start()
    try:
        assert link.wait_connected(10), "link did not connect"
        listener.publish("test/1/x", b"one")
        listener.publish("test/2/x", b"two")
        wait_until(lambda: len(seen) == 2, 10, "both messages despite the raising handler")
        assert link.callback_errors == 2
        assert link.connected
    finally:
        link.stop()
        link.stop()


def test_a_subscription_made_while_connecting_is_not_lost(broker: Mosquitto,
                                                          listener: Listener) -> None:
    """Another thread subscribes in the middle of the connect handling (as the policy
    downlink does on a running uplink's link): the subscription must still take effect."""
    seen: list[bytes] = []
    link = Link(fast_settings(broker), "t-late-sub")
    link.subscribe(TopicFilter("test/first"), lambda t, p: None)
    real = link._client.subscribe
    late_done = threading.Event()

    def subscribe_and_race(sub: str, qos: int = 0):  # type: ignore[no-untyped-def]
        if not late_done.is_set():            # inside _on_connect, after its snapshot
            late_done.set()
            t = threading.Thread(target=link.subscribe,
                                 args=(TopicFilter("test/late"), lambda t, p: seen.append(p)))
            t.start()
            t.join()
        return real(sub, qos=qos)

    link._client.subscribe = subscribe_and_race  # type: ignore[method-assign]
    link.start()
    try:
        assert link.wait_connected(10), "link did not connect"
        assert late_done.is_set()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            listener.publish("test/late", b"hello")
            time.sleep(0.2)
        assert seen, "the subscription made while connecting was lost"
    finally:
        link.stop()


def test_reconnects_after_broker_restart_and_last_will_is_retained(
        broker: Mosquitto, listener: Listener) -> None:
    status = Topic("ykt/v1/t/will-test/status")
    listener.subscribe(str(status))
    link = Link(fast_settings(broker), "t-will", status_topic=status)
    link.start()
    try:
        assert link.wait_connected(10)
        # drop the TCP connection under the client: the broker publishes the will
        sock = link._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        wait_until(lambda: b'{"state":"offline"}' in listener.got(str(status)), 10,
                   "the retained last will")
        wait_until(lambda: link.connects >= 2, 10, "the link to reconnect")
        broker.stop(kill=True)
        wait_until(lambda: not link.connected, 10, "the link to notice the broker is gone")
        broker.start()
        wait_until(lambda: link.connects >= 3, 15, "the link to reconnect after restart")
    finally:
        link.stop()
