"""The broker's authorisation, asserted against a real Mosquitto run from the configuration
``ykt hub broker-config`` writes (the ``tls_broker`` fixture): each refusal is the broker's
own answer — reason code 0x87 on the SUBACK or PUBACK, or a refused connection — never a
message that merely did not arrive."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from agent.identity import load_certificate
from sync.hub.ca import HubCA, new_private_key, write_private_key, write_public
from sync.session import NOT_AUTHORIZED, BrokerSession, SessionRefused
from tests.fixtures.tls_broker import TlsBroker

ACCEPTED = (0x00, 0x10)     # success, or "no matching subscribers"


def session(tb: TlsBroker, name: str, client_id: str | None = None) -> BrokerSession:
    s = BrokerSession(tb.settings(name), client_id if client_id is not None else name)
    s.connect()
    return s


@pytest.mark.parametrize("topic", ["ykt/v1/t/B/tx", "ykt/v1/t/B/status",
                                   "ykt/v1/t/B/cmd/result", "ykt/v1/t/A/ack",
                                   "ykt/v1/t/B/ack", "ykt/v1/t/A/cmd",
                                   "ykt/v1/policy/bus/manifest", "ykt/v1/hub/hub-1/status",
                                   "ykt/v1/online/bus/hotlist",
                                   "$CONTROL/dynamic-security/v1"])
def test_a_terminal_cannot_publish_outside_its_own_topics(tls_broker: TlsBroker,
                                                          topic: str) -> None:
    with session(tls_broker, "A") as a:
        assert a.publish("ykt/v1/t/A/tx", b"{}") in ACCEPTED     # its own: accepted
        assert a.publish(topic, b"{}") == NOT_AUTHORIZED


@pytest.mark.parametrize("topic_filter", ["ykt/v1/t/B/ack", "ykt/v1/t/B/cmd",
                                          "ykt/v1/t/+/ack", "ykt/v1/t/B/tx",
                                          "ykt/v1/policy/rail/manifest",
                                          "ykt/v1/policy/+/manifest", "#",
                                          "ykt/v1/online/rail/hotlist", "ykt/v1/online/#",
                                          "$share/ykt-hub/ykt/v1/t/+/tx",
                                          "$share/x/ykt/v1/t/A/ack"])
def test_a_terminal_cannot_subscribe_outside_its_own_topics(tls_broker: TlsBroker,
                                                            topic_filter: str) -> None:
    with session(tls_broker, "A") as a:
        assert a.subscribe("ykt/v1/t/A/ack") == 1                 # its own: granted QoS 1
        assert a.subscribe(topic_filter) == NOT_AUTHORIZED


def test_a_terminal_reads_its_own_ack_cmd_hub_status_and_channel_manifest(
        tls_broker: TlsBroker) -> None:
    with session(tls_broker, "A") as a:
        for flt in ("ykt/v1/t/A/ack", "ykt/v1/t/A/cmd", "ykt/v1/hub/+/status",
                    "ykt/v1/policy/bus/manifest", "ykt/v1/online/bus/hotlist"):
            assert a.subscribe(flt) == 1, flt
        for topic in ("ykt/v1/t/A/status", "ykt/v1/t/A/cmd/result"):
            assert a.publish(topic, b"{}") in ACCEPTED, topic


def test_only_the_hub_acks_announces_and_joins_the_share_group(tls_broker: TlsBroker) -> None:
    with session(tls_broker, "hub") as hub:
        assert hub.subscribe("$share/ykt-hub/ykt/v1/t/+/tx") == 1
        assert hub.subscribe("ykt/v1/t/+/status") == 1
        assert hub.publish("ykt/v1/t/A/ack", b"{}") in ACCEPTED
        assert hub.publish("ykt/v1/hub/hub-1/status", b"{}") in ACCEPTED
        assert hub.publish("ykt/v1/online/bus/hotlist", b"{}", retain=True) in ACCEPTED
        assert hub.publish("ykt/v1/t/A/tx", b"{}") == NOT_AUTHORIZED   # not a terminal
        assert hub.subscribe("#") == NOT_AUTHORIZED


def test_an_operator_publishes_manifests_and_nothing_else(tls_broker: TlsBroker) -> None:
    with session(tls_broker, "operator") as op:
        assert op.publish("ykt/v1/policy/bus/manifest", b"{}", retain=True) in ACCEPTED
        assert op.publish("ykt/v1/t/A/ack", b"{}") == NOT_AUTHORIZED
        # the online hotlist path is the hub's (it holds the online key), never an operator's
        assert op.publish("ykt/v1/online/bus/hotlist", b"{}", retain=True) == NOT_AUTHORIZED
        assert op.publish("ykt/v1/hub/hub-1/status", b"{}") == NOT_AUTHORIZED
        assert op.subscribe("$share/ykt-hub/ykt/v1/t/+/tx") == NOT_AUTHORIZED


def test_a_terminal_cannot_take_another_terminals_client_id(tls_broker: TlsBroker) -> None:
    """use_username_as_clientid: A asking for client id "B" gets "A"; B is not kicked off."""
    with session(tls_broker, "B") as b, session(tls_broker, "A", client_id="B") as a:
        # A's CONNACK came after the broker handled any take-over: B must still be there,
        # proven by a round trip on B's connection after it
        assert b.publish("ykt/v1/t/B/status", b"{}") in ACCEPTED
        assert not b.disconnected.is_set()
        # and A got A's rights, not B's
        assert a.publish("ykt/v1/t/B/tx", b"{}") == NOT_AUTHORIZED
        assert a.publish("ykt/v1/t/A/tx", b"{}") in ACCEPTED


def test_a_client_without_a_certificate_from_the_hub_ca_cannot_connect(
        tls_broker: TlsBroker, tmp_path: object) -> None:
    other = HubCA.init(tls_broker.root / "other-ca")
    key, cert = other.issue_identity("A", "terminal", tls_broker.root / "rogue",
                                     basename="terminal")
    rogue = tls_broker.settings("A").model_copy(update={"tls_cert_file": cert,
                                                        "tls_key_file": key})
    with pytest.raises(SessionRefused):
        BrokerSession(rogue, "A").connect()
    no_cert = tls_broker.settings("A").model_copy(update={"tls_cert_file": None,
                                                          "tls_key_file": None})
    with pytest.raises((SessionRefused, ConnectionError)):
        BrokerSession(no_cert, "A").connect()
    plain = tls_broker.settings("A").model_copy(update={"tls_ca_file": None,
                                                        "tls_cert_file": None,
                                                        "tls_key_file": None})
    with pytest.raises((SessionRefused, ConnectionError, TimeoutError)):
        BrokerSession(plain, "anon").connect(timeout=5)
    with session(tls_broker, "A"):      # the genuine certificate still works
        pass


def test_an_expired_certificate_cannot_connect(tls_broker: TlsBroker) -> None:
    key = new_private_key()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    cert = tls_broker.ca.issue_client(key.public_key(), "A", "terminal", days=90,
                                      not_before=long_ago)
    d = tls_broker.root / "expired"
    write_private_key(d / "terminal.key", key)
    write_public(d / "terminal.crt", cert)
    expired = tls_broker.settings("A").model_copy(update={
        "tls_cert_file": d / "terminal.crt", "tls_key_file": d / "terminal.key"})
    with pytest.raises(SessionRefused):
        BrokerSession(expired, "A").connect()


def test_the_generated_files_are_readable_by_the_broker_user_only_where_needed(
        tls_broker: TlsBroker) -> None:
    f = tls_broker.files
    conf = f.conf.read_text()
    for line in ("require_certificate true", "use_identity_as_username true",
                 "use_username_as_clientid true", "allow_anonymous false",
                 f"crlfile {f.crl}", "user mosquitto"):
        assert line in conf.splitlines(), line
    assert "mosquitto_dynamic_security.so" in conf
    assert sum(line.startswith("listener ") for line in conf.splitlines()) == 1
    key = f.dir / "broker.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert stat.S_IMODE(f.dynsec.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.dir.stat().st_mode) == 0o750
    assert stat.S_IMODE(f.crl.stat().st_mode) == 0o644
    if os.geteuid() == 0:
        import pwd
        mosq = pwd.getpwnam("mosquitto")
        assert (key.stat().st_uid, key.stat().st_gid) == (0, mosq.pw_gid)
        assert f.dynsec.stat().st_uid == mosq.pw_uid
    # the broker's private key and the CA's key are not in what the broker reads
    assert "PRIVATE KEY" not in conf
    assert not (f.dir / "ca.key").exists()
    assert load_certificate(f.dir / "ca.crt") == tls_broker.ca.cert
