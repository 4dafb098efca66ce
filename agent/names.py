"""Names of the ``ykt/v1`` protocol that are not MQTT-specific: terminal ids and policy
channels, with their validation.

A neutral module: the policy bundle format (:mod:`agent.policy.manifest`) and the MQTT
topics (:mod:`sync.topics`) both validate names with it, so ``agent.policy`` never
imports ``sync`` (see ``docs/architecture.md``). Invalid names raise ``ValueError``.
"""

from __future__ import annotations

import re

__all__ = ["TERMINAL_ID_MAX", "validate_channel", "validate_name", "validate_terminal_id"]

TERMINAL_ID_MAX = 64
"""Longest terminal id or channel name, in characters."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def validate_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid name segment (terminal id, channel segment, share
    group, hub instance), else raise ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > TERMINAL_ID_MAX:
        raise ValueError(f"{what} {value[:16]!r}… is longer than {TERMINAL_ID_MAX} characters")
    if not _ID_RE.match(value):
        raise ValueError(
            f"{what} {value!r} may hold only letters, digits and . _ : - "
            "(never / + # or spaces) and must start with a letter or digit"
        )
    return value


def validate_terminal_id(value: str) -> str:
    """Return ``value`` if it is a valid terminal id, else raise ``ValueError``.

    1–64 characters from ``A-Z a-z 0-9 . _ : -``, starting with a letter or digit; so an
    id can never contain the MQTT separators or wildcards ``/ + #``.
    """
    return validate_name(value, "terminal id")


def validate_channel(value: str) -> str:
    """Return ``value`` if it is a valid policy channel, else raise ``ValueError``.

    1–8 ``/``-separated segments (e.g. ``city/370302/bus``), each following the rules of
    terminal ids, so a channel never holds an empty level or the wildcards ``+ #``.
    """
    parts = value.split("/") if isinstance(value, str) else []
    if not 1 <= len(parts) <= 8:
        raise ValueError(f"policy channel {value!r} must have 1 to 8 '/'-separated segments")
    for part in parts:
        validate_name(part, f"policy channel segment of {value!r}")
    return value
