"""Secrets from the environment or systemd credentials — never from config files.

Light on purpose (no pydantic, no MQTT): drivers and CLIs import it too.

**The one rule for reading a secret** (:func:`read_secret`, used for every secret: the
pseudonymisation key, the MQTT password, the PSAM keys): the environment variable wins
if it is set and not empty, else the file ``$CREDENTIALS_DIRECTORY/<name>`` (systemd
``LoadCredential=``); from either source, trailing line-ending characters (``\r``,
``\n``: editors and ``echo`` add them) are removed and nothing else, so spaces are part
of a secret such as a password. A value that is empty after that counts as not set.
Formats that ignore whitespace (hex keys) parse the value as it is returned.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.errors import ConfigurationError

__all__ = ["DEMO_PSEUDONYM_KEY", "SecretError", "pseudonym_key", "read_secret"]

log = logging.getLogger(__name__)


class SecretError(ConfigurationError):
    """A secret is missing where it is required, or not in its format (e.g. not hex)."""

DEMO_PSEUDONYM_KEY = bytes.fromhex("59696b61746f6e672d64656d6f2d6b65792d6e6f742d666f722d757365")
"""The demo deployment's key ("Yikatong-demo-key-not-for-use"): for demos and tests only."""


def read_secret(name: str, env: str) -> str | None:
    """A secret from ``$env`` or ``$CREDENTIALS_DIRECTORY/name`` (see the module's rule:
    trailing ``\r``/``\n`` removed, nothing else); None if neither gives a value.
    Raises ``OSError`` if the credentials file exists but cannot be read, and
    ``UnicodeDecodeError`` if it is not UTF-8."""
    value = _without_line_end(os.environ.get(env, ""))
    if value:
        return value
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        p = Path(cred_dir) / name
        if p.exists():
            return _without_line_end(p.read_text(encoding="utf-8")) or None
    return None


def _without_line_end(value: str) -> str:
    return value.rstrip("\r\n")


def pseudonym_key(*, demo: bool) -> bytes:
    """The deployment's pseudonymisation key from ``$YKT_PSEUDONYM_KEY`` or
    ``$CREDENTIALS_DIRECTORY/pseudonym-key`` (hex); the built-in demo key only when
    ``demo``. Raises :class:`SecretError` (a ``ValueError``) for a non-hex key or none at
    all outside demo mode."""
    secret = read_secret("pseudonym-key", "YKT_PSEUDONYM_KEY")
    if secret:
        try:
            return bytes.fromhex(secret)   # fromhex skips whitespace
        except ValueError:
            raise SecretError("pseudonym key must be hex (YKT_PSEUDONYM_KEY or "
                             "$CREDENTIALS_DIRECTORY/pseudonym-key)") from None
    if demo:
        log.warning("using the built-in DEMO pseudonymisation key: not for production")
        return DEMO_PSEUDONYM_KEY
    raise SecretError("no pseudonymisation key: set YKT_PSEUDONYM_KEY or provide "
                     "$CREDENTIALS_DIRECTORY/pseudonym-key (or terminal.demo = true)")
