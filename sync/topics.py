"""MQTT topic names of the ``ykt/v1`` protocol as small, frozen, validated types.

Two kinds (after aiomqtt): a :class:`Topic` is a concrete name one publishes to (no
wildcards); a :class:`TopicFilter` is what one subscribes to (``+``/``#`` allowed) and
:meth:`TopicFilter.matches` tells whether a topic falls under it. Shared subscriptions
(``$share/{group}/…``) are made with :meth:`TopicFilter.shared`.

Per-terminal topics are built by :class:`TerminalTopics`; :func:`parse_terminal_topic`
goes the other way. Terminal ids and policy channel names are validated by
:func:`validate_terminal_id` / :func:`validate_channel` (``ValueError`` when invalid;
defined in :mod:`agent.names`, re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.names import TERMINAL_ID_MAX, validate_channel, validate_name, validate_terminal_id

__all__ = [
    "HUB_STATUS_ALL",
    "PREFIX",
    "TERMINAL_ID_MAX",
    "TerminalTopicKind",
    "TerminalTopics",
    "Topic",
    "TopicFilter",
    "parse_terminal_topic",
    "hub_status",
    "online_hotlist",
    "policy_manifest",
    "validate_channel",
    "validate_terminal_id",
]

PREFIX = "ykt/v1"
"""Every topic of this protocol starts with this prefix (the version is part of it)."""

TerminalTopicKind = Literal["tx", "ack", "status", "cmd", "cmd/result"]
_KINDS: tuple[TerminalTopicKind, ...] = ("tx", "ack", "status", "cmd", "cmd/result")


@dataclass(frozen=True, slots=True)
class Topic:
    """A concrete topic name (no wildcards). Raises ``ValueError`` when invalid."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("a topic must be a non-empty string")
        if "+" in self.value or "#" in self.value:
            raise ValueError(f"topic {self.value!r} must not contain wildcards")
        if len(self.value.encode()) > 65535:
            raise ValueError("topic longer than 65535 bytes")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A subscription filter (``+`` one level, ``#`` the rest). ``ValueError`` when invalid."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("a topic filter must be a non-empty string")
        levels = self.value.split("/")
        for i, level in enumerate(levels):
            if "+" in level and level != "+":
                raise ValueError(f"'+' must fill a whole level in {self.value!r}")
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise ValueError(f"'#' must be the whole last level in {self.value!r}")

    def matches(self, topic: Topic | str) -> bool:
        """True if the concrete ``topic`` falls under this filter."""
        t = str(topic).split("/")
        f = self.value.split("/")
        for i, level in enumerate(f):
            if level == "#":
                return True
            if i >= len(t) or (level != "+" and level != t[i]):
                return False
        return len(t) == len(f)

    def shared(self, group: str) -> str:
        """The MQTT 5 shared-subscription string ``$share/{group}/{filter}``."""
        validate_name(group, "share group")
        return f"$share/{group}/{self.value}"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class TerminalTopics:
    """The topics of one terminal: ``ykt/v1/t/{terminal}/{tx,ack,status,cmd,cmd/result}``."""

    terminal: str

    def __post_init__(self) -> None:
        validate_terminal_id(self.terminal)

    def _topic(self, kind: TerminalTopicKind) -> Topic:
        return Topic(f"{PREFIX}/t/{self.terminal}/{kind}")

    @property
    def tx(self) -> Topic:
        """Batches of journal records, terminal → hub, QoS 1."""
        return self._topic("tx")

    @property
    def ack(self) -> Topic:
        """The hub's highest contiguous committed seq, hub → terminal, QoS 1."""
        return self._topic("ack")

    @property
    def status(self) -> Topic:
        """Retained heartbeat; the last will sets it to ``{"state":"offline"}``."""
        return self._topic("status")

    @property
    def cmd(self) -> Topic:
        """Operations commands, hub → terminal."""
        return self._topic("cmd")

    @property
    def cmd_result(self) -> Topic:
        """Results of operations commands, terminal → hub."""
        return self._topic("cmd/result")

    @staticmethod
    def all_of(kind: TerminalTopicKind) -> TopicFilter:
        """The filter for one kind of topic across every terminal, e.g. ``ykt/v1/t/+/tx``."""
        if kind not in _KINDS:
            raise ValueError(f"unknown terminal topic kind {kind!r}")
        return TopicFilter(f"{PREFIX}/t/+/{kind}")


def hub_status(instance: str) -> Topic:
    """``ykt/v1/hub/{instance}/status``: a hub instance's retained online/offline status.

    Terminals watch ``ykt/v1/hub/+/status`` and resend their outbox at once when a hub
    comes (back) online, instead of waiting for an ack timeout.
    """
    return Topic(f"{PREFIX}/hub/{validate_name(instance, 'hub instance')}/status")


HUB_STATUS_ALL = TopicFilter(f"{PREFIX}/hub/+/status")
"""Every hub instance's status topic."""


def policy_manifest(channel: str) -> Topic:
    """``ykt/v1/policy/{channel}/manifest``: the retained signed manifest of a channel."""
    return Topic(f"{PREFIX}/policy/{validate_channel(channel)}/manifest")


def online_hotlist(channel: str) -> Topic:
    """``ykt/v1/online/{channel}/hotlist``: the retained online hotlist manifest of a
    channel (signed by the online hotlist key; its own version line, never the full
    bundle's topic). Under its own prefix so the broker can let only the hub publish it."""
    return Topic(f"{PREFIX}/online/{validate_channel(channel)}/hotlist")


def parse_terminal_topic(topic: Topic | str) -> tuple[str, TerminalTopicKind] | None:
    """``(terminal, kind)`` for a per-terminal topic, or ``None`` if it is not one.

    Never raises: an invalid terminal id in the topic also gives ``None``.
    """
    parts = str(topic).split("/")
    head = PREFIX.split("/")
    if len(parts) < 5 or parts[:2] != head or parts[2] != "t":
        return None
    terminal, name = parts[3], "/".join(parts[4:])
    kind = next((k for k in _KINDS if k == name), None)
    if kind is None:
        return None
    try:
        validate_terminal_id(terminal)
    except ValueError:
        return None
    return terminal, kind
