"""Sync between a terminal and the hub over MQTT 5.

* :mod:`sync.topics` — the topic names under ``ykt/v1`` as small validated types.
* :mod:`sync.link` — :class:`~sync.link.MqttSettings` (the ``[mqtt]`` config section) and
  :class:`~sync.link.Link`, a paho-mqtt client with reconnect, backoff and jitter.
* :mod:`sync.uplink` — :class:`~sync.uplink.Uplink`: journal → hub, resent until acked.
* :mod:`sync.hub` — the hub: ingest, store, verify chains, acknowledge.

The wire protocol is specified in ``docs/protocol.md``.
"""
