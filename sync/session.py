"""A synchronous MQTT 5 session that reports the broker's answers: the CONNACK, each
SUBACK's and PUBACK's reason codes.

:class:`sync.link.Link` is the long-running client (reconnects, callbacks); this is the
short one for commands that say one thing to the broker and must know what it answered —
the dynamic-security control topic (:mod:`sync.hub.dynsec`) — and for tests that assert a
refusal by the broker's own reason code (0x87 "Not authorized") rather than by a message
that failed to arrive.

Every wait has a timeout (seconds) and raises ``TimeoutError`` when it passes.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import YktError
from agent.mqtt_settings import MqttSettings

__all__ = ["NOT_AUTHORIZED", "BrokerSession", "SessionRefused"]

NOT_AUTHORIZED = 0x87
"""MQTT 5 reason code "Not authorized" (CONNACK, SUBACK, PUBACK)."""


class SessionRefused(YktError, ConnectionError):
    """The broker refused the connection (``reason`` is the CONNACK's code, or ``None``
    when the TLS handshake or the socket failed first)."""

    def __init__(self, message: str, reason: int | None) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerSession:
    """Connect with ``settings`` (TLS and client certificate from it) as ``client_id``.

    ``connect()`` raises :class:`SessionRefused` when the broker refuses (or drops the
    handshake). ``disconnected`` is set when the broker closes the connection later;
    ``disconnect_reason`` then holds its reason code.
    """

    def __init__(self, settings: MqttSettings, client_id: str = "") -> None:
        self.settings = settings
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        if settings.tls_ca_file is not None:
            c.tls_set(ca_certs=str(settings.tls_ca_file),
                      certfile=None if settings.tls_cert_file is None
                      else str(settings.tls_cert_file),
                      keyfile=None if settings.tls_key_file is None
                      else str(settings.tls_key_file))
        if settings.username is not None:
            c.username_pw_set(settings.username, settings.password())
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self._client = c
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self.server_max_packet: int | None = None
        """The CONNACK's Maximum Packet Size, bytes (``None``: the broker set none)."""
        self._acks: dict[int, list[int]] = {}
        self.disconnected = threading.Event()
        self.disconnect_reason: int | None = None
        self.messages: list[tuple[str, bytes]] = []

    def connect(self, timeout: float = 10.0, *, max_packet_size: int | None = None) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        props.MaximumPacketSize = max_packet_size or self.settings.max_packet_size
        try:
            self._client.connect(self.settings.host, self.settings.port, keepalive=30,
                                 clean_start=True, properties=props)
        except OSError as err:   # includes ssl.SSLError: the handshake was refused
            raise SessionRefused(f"TLS/socket refused: {err}", None) from err
        self._client.loop_start()
        with self._cond:
            ok = self._cond.wait_for(lambda: self._connack is not None
                                     or self.disconnected.is_set(), timeout)
        if not ok:
            self.close()
            raise TimeoutError("no CONNACK")
        if self._connack is None or self._connack.is_failure:
            code = None if self._connack is None else int(self._connack.value)
            self.close()
            raise SessionRefused(f"broker refused the connection: {self._connack}", code)

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> int:
        """Subscribe; the SUBACK's reason code (0-2 granted QoS, >= 0x80 refused)."""
        rc, mid = self._client.subscribe(topic_filter, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe not sent: {mqtt.error_string(rc)}")
        return self._wait_ack(mid, timeout)[0]

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                timeout: float = 10.0) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 or 0x10 accepted, 0x87 refused)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish not sent: {mqtt.error_string(info.rc)}")
        return self._wait_ack(info.mid, timeout)[0]

    def _wait_ack(self, mid: int, timeout: float) -> list[int]:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks
                                       or self.disconnected.is_set(), timeout):
                raise TimeoutError(f"no acknowledgement for message {mid}")
            if mid not in self._acks:
                raise ConnectionError(f"disconnected ({self.disconnect_reason}) before the "
                                      "acknowledgement")
            return self._acks.pop(mid)

    def wait_message(self, count: int = 1, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Wait until ``count`` messages have arrived; all received so far."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
            return list(self.messages)

    def close(self) -> None:
        """Disconnect and stop the network thread. Safe twice."""
        self._client.disconnect()
        self._client.loop_stop()
        getattr(self._client, "_reset_sockets", lambda: None)()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:
        with self._cond:
            self._connack = reason
            mps = getattr(properties, "MaximumPacketSize", None)
            self.server_max_packet = int(mps) if mps is not None else None
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Properties | None) -> None:
        with self._cond:
            self.disconnect_reason = int(reason.value)
            self.disconnected.set()
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Properties | None) -> None:
        with self._cond:
            self._acks[mid] = [int(r.value) for r in reasons]
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        with self._cond:
            self._acks[mid] = [int(reason.value)]
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()
