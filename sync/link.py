"""The MQTT connection shared by the uplink and the hub.

:class:`MqttSettings` (defined in :mod:`agent.mqtt_settings`, re-exported here) is the
``[mqtt]`` section of the agent's config (and the hub's connection settings).
:class:`Link` wraps a paho-mqtt 2.x client (MQTT 5) running its network loop in a thread:

* it reconnects forever with exponential backoff and jitter
  (``reconnect_min_s`` doubling up to ``reconnect_max_s``, each wait drawn uniformly
  from ``[d/2, d]``);
* it re-subscribes its filters after every (re)connect (sessions are clean: whoever
  needs data after an outage resends it — the journal is the store-and-forward buffer);
* it can carry a retained status topic with a retained last will;
* every callback it calls is wrapped: an exception is logged, never kills the loop.

:meth:`Link.publish` raises :class:`NotConnected` while disconnected instead of queueing
or silently dropping: callers decide (the uplink simply resends from the journal later).

Sizes (MQTT 5 Maximum Packet Size): the CONNECT carries ``settings.max_packet_size``, so
the broker sends this client nothing larger, and a larger message that arrives anyway is
dropped (counted in ``oversize_dropped``) before any handler parses it. The broker's own
limit, from its CONNACK, is :attr:`Link.server_max_packet`; :meth:`Link.publish` raises
:class:`PacketTooLarge` instead of sending a packet over it (Mosquitto would disconnect
the sender, and a resend after reconnecting would loop), and :meth:`Link.max_payload`
tells a sender how many payload bytes fit on a topic.

TLS: the settings' CA, certificate and key; where they name none, the files of systemd's
``$CREDENTIALS_DIRECTORY`` (:meth:`MqttSettings.with_credentials`).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import YktError
from agent.mqtt_settings import PASSWORD_CREDENTIAL, PASSWORD_ENV, MqttSettings
from sync.topics import Topic, TopicFilter

__all__ = ["PASSWORD_ENV", "PASSWORD_CREDENTIAL", "Link", "MessageHandler", "MqttSettings",
           "NotConnected", "PacketTooLarge", "publish_packet_size"]

log = logging.getLogger(__name__)


class _PahoChatter(logging.Filter):
    """Demote everything paho-mqtt logs to DEBUG.

    paho logs socket errors at ERROR ("failed to receive on socket", "Client is not
    connected") on every pass of its loop during an ordinary broker outage; the link
    reports an outage itself, once, as a WARNING when it starts and an INFO when it ends.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return _PAHO_LOG.isEnabledFor(logging.DEBUG)


_PAHO_LOG = logging.getLogger("sync.paho")
_PAHO_LOG.addFilter(_PahoChatter())

_properties: Callable[[int], Properties] = Properties
"""paho's ``Properties(packet_type)``, typed (paho leaves its constructor untyped)."""

MessageHandler = Callable[[str, bytes], None]
"""``handler(topic, payload)`` for messages matching a subscription."""


class NotConnected(YktError, ConnectionError):
    """The link is not connected to the broker; nothing was published."""


class PacketTooLarge(YktError, ValueError):
    """A publish would exceed the broker's Maximum Packet Size; nothing was sent."""


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_packet_size(topic: str, payload_len: int, qos: int = 1) -> int:
    """Bytes of an MQTT 5 PUBLISH without properties: fixed header, topic, packet id,
    property length (0) and payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + payload_len
    return 1 + _varint_len(remaining) + remaining


class Link:
    """One MQTT 5 client with a loop thread, reconnect with backoff+jitter, retained status.

    ``status_topic``/``will_payload``: when given, the broker publishes ``will_payload``
    retained on ``status_topic`` if the connection drops, and :meth:`stop` publishes it
    itself. ``on_connect``/``on_disconnect`` are called (in the loop thread) after each
    connect (subscriptions already requested) and after each loss of connection.
    """

    def __init__(self, settings: MqttSettings, client_id: str, *,
                 status_topic: Topic | None = None, will_payload: bytes = b'{"state":"offline"}',
                 on_connect: Callable[[], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings = settings.with_credentials()
        self.client_id = client_id
        self._status_topic = status_topic
        self._will = will_payload
        self._on_connect_cb = on_connect
        self._on_disconnect_cb = on_disconnect
        self.on_subscribed: Callable[[], None] | None = None
        """Called (link thread) once every subscription of a new connection is granted."""
        self._rng = rng or random.Random()
        self._subs: list[tuple[str, TopicFilter, int, MessageHandler]] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subs: set[int] = set()
        self._lock = threading.Lock()
        self._attempt = 0
        self._started = False
        self._stopping = False
        self.connects = 0
        """How many times a connection was established (for tests and status)."""
        self.connect_failures = 0
        """How many connection attempts failed (logged at DEBUG: an outage is one WARNING)."""
        self.callback_errors = 0
        """How many callback exceptions were caught and logged."""
        self.server_max_packet: int | None = None
        """The broker's Maximum Packet Size from its last CONNACK, bytes (None: no limit)."""
        self.oversize_dropped = 0
        """Messages larger than ``settings.max_packet_size`` dropped unparsed."""
        self._client = self._make_client()
        self._next_delay()

    # -- setup ---------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5)
        c.suppress_exceptions = True
        c.enable_logger(_PAHO_LOG)
        if s.tls_ca_file is not None:
            c.tls_set(ca_certs=str(s.tls_ca_file),
                      certfile=None if s.tls_cert_file is None else str(s.tls_cert_file),
                      keyfile=None if s.tls_key_file is None else str(s.tls_key_file))
        if s.username is not None:
            c.username_pw_set(s.username, s.password())
        if self._status_topic is not None:
            c.will_set(str(self._status_topic), self._will, qos=1, retain=True)
        c.max_inflight_messages_set(32)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def subscribe(self, topic_filter: TopicFilter, handler: MessageHandler, *, qos: int = 1,
                  share_group: str | None = None) -> None:
        """Subscribe (now if connected, and after every reconnect); call ``handler`` on match.

        With ``share_group`` the subscription is ``$share/{group}/{filter}`` (MQTT 5 shared).
        """
        sub = topic_filter.shared(share_group) if share_group else str(topic_filter)
        with self._lock:     # atomic with _on_connect's snapshot of the subscriptions
            self._subs.append((sub, topic_filter, qos, handler))
            connected = self._connected.is_set()
        if connected:
            self._client.subscribe(sub, qos=qos)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting in the background (returns at once). Safe to call twice."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stopping = False
        self._client.enable_logger(_PAHO_LOG)
        s = self.settings
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        props.MaximumPacketSize = s.max_packet_size
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True,
                                   properties=props)
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the offline status (if any), disconnect and join the loop. Safe twice."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        if self._status_topic is not None and self._connected.is_set():
            try:
                info = self._client.publish(str(self._status_topic), self._will, qos=1,
                                            retain=True)
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as err:
                log.warning("could not publish offline status: %s", err)
        self._stopping = True
        self._client.disable_logger()  # paho logs a spurious error for its last loop pass
        self._client.drop_out_messages()
        self._client.disconnect()
        self._client.loop_stop()
        # paho closes the loop's wake-up socket pair only when the client is collected,
        # which a reference cycle (callbacks) may defer to the end of the process
        getattr(self._client, "_reset_sockets", lambda: None)()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a connection whose subscriptions are granted."""
        return self._connected.wait(timeout) and self._subscribed.wait(timeout)

    # -- publishing ----------------------------------------------------------------------
    def publish(self, topic: Topic, payload: bytes | str, *, qos: int = 1,
                retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish; raises :class:`NotConnected` if the link is down (nothing is queued)."""
        if not self._connected.is_set():
            raise NotConnected(f"not connected to {self.settings.host}:{self.settings.port}")
        size = publish_packet_size(str(topic), len(payload.encode() if isinstance(payload, str)
                                                   else payload), qos)
        limit = self.server_max_packet
        if limit is not None and size > limit:
            raise PacketTooLarge(f"a {size}-byte packet on {topic} exceeds the broker's "
                                 f"maximum of {limit} bytes; not sent")
        info = self._client.publish(str(topic), payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise NotConnected("connection lost while publishing")
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish failed: {mqtt.error_string(info.rc)}")
        return info

    def max_payload(self, topic: Topic, qos: int = 1) -> int | None:
        """The largest payload, bytes, that fits the broker's limit on ``topic`` (None: the
        broker announced none, or not connected yet)."""
        limit = self.server_max_packet
        if limit is None:
            return None
        n = limit - publish_packet_size(str(topic), 0, qos)
        while n > 0 and publish_packet_size(str(topic), n, qos) > limit:
            n -= 1
        return max(n, 0)

    # -- paho callbacks (loop thread) ----------------------------------------------------
    def _next_delay(self) -> None:
        s = self.settings
        cap = min(s.reconnect_max_s, s.reconnect_min_s * (2 ** min(self._attempt, 30)))
        delay = self._rng.uniform(cap / 2, cap)
        self._attempt += 1
        # paho waits exactly this long before its next attempt (min == max == delay)
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.callback_errors += 1
            log.exception("%s callback failed (link %s); continuing", what, self.client_id)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("broker %s:%s refused connection: %s", self.settings.host,
                        self.settings.port, reason)
            self._guard("reconnect-delay", self._next_delay)
            return
        self._attempt = 0
        self._guard("reconnect-delay", self._next_delay)
        mps = getattr(properties, "MaximumPacketSize", None)
        self.server_max_packet = int(mps) if mps is not None else None
        self.connects += 1
        log.info("connected to %s:%s as %s", self.settings.host, self.settings.port,
                 self.client_id)
        with self._lock:
            # a subscribe() after this snapshot sees "connected" and subscribes itself;
            # one before it is in the snapshot (setting it later lost such a subscription)
            subs = list(self._subs)
            self._pending_subs.clear()
            if not subs:
                self._subscribed.set()
            else:
                self._subscribed.clear()
            self._connected.set()
        for sub, _flt, qos, _h in subs:
            rc, mid = client.subscribe(sub, qos=qos)
            if mid is not None:
                self._pending_subs.add(mid)
        if self._on_connect_cb is not None:
            self._guard("on_connect", self._on_connect_cb)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Properties | None) -> None:
        for r in reasons:
            if r.is_failure:
                log.error("broker refused a subscription of %s: %s", self.client_id, r)
        self._pending_subs.discard(mid)
        if not self._pending_subs and not self._subscribed.is_set():
            self._subscribed.set()
            if self.on_subscribed is not None:
                self._guard("on_subscribed", self.on_subscribed)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Properties | None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        # Unacknowledged QoS 1 messages are not resent by paho: the caller resends
        # from its own durable store, so nothing is sent twice for the same reason.
        client.drop_out_messages()
        self._guard("reconnect-delay", self._next_delay)
        if was and not self._stopping:
            log.warning("disconnected from %s:%s (%s); reconnecting with backoff",
                        self.settings.host, self.settings.port, reason)
            if self._on_disconnect_cb is not None:
                self._guard("on_disconnect", self._on_disconnect_cb)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.connect_failures += 1
        log.debug("connection to %s:%s failed; retrying", self.settings.host,
                  self.settings.port)
        self._guard("reconnect-delay", self._next_delay)

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > self.settings.max_packet_size:
            self.oversize_dropped += 1
            log.warning("dropped a %d-byte message on %s unparsed (limit %d bytes)",
                        len(msg.payload), msg.topic, self.settings.max_packet_size)
            return
        with self._lock:
            subs = list(self._subs)
        for _sub, flt, _qos, handler in subs:
            if flt.matches(msg.topic):
                self._guard(f"message {msg.topic}", handler, msg.topic, msg.payload)
