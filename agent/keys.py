"""Secrets from the environment or systemd credentials — never from config files.

Light on purpose (no pydantic, no MQTT): drivers and CLIs import it too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["DEMO_PSEUDONYM_KEY", "pseudonym_key", "read_secret"]

log = logging.getLogger(__name__)

DEMO_PSEUDONYM_KEY = bytes.fromhex("59696b61746f6e672d64656d6f2d6b65792d6e6f742d666f722d757365")
"""The demo deployment's key ("Yikatong-demo-key-not-for-use"): for demos and tests only."""


def read_secret(name: str, env: str) -> str | None:
    """A secret from ``$env`` or ``$CREDENTIALS_DIRECTORY/name``; None if neither is set."""
    if os.environ.get(env):
        return os.environ[env]
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        p = Path(cred_dir) / name
        if p.exists():
            return p.read_text(encoding="utf-8").strip()
    return None


def pseudonym_key(*, demo: bool) -> bytes:
    """The deployment's pseudonymisation key from ``$YKT_PSEUDONYM_KEY`` or
    ``$CREDENTIALS_DIRECTORY/pseudonym-key`` (hex); the built-in demo key only when
    ``demo``. Raises ``ValueError`` for a non-hex key or none at all outside demo mode."""
    secret = read_secret("pseudonym-key", "YKT_PSEUDONYM_KEY")
    if secret:
        try:
            return bytes.fromhex(secret.strip())
        except ValueError:
            raise ValueError("pseudonym key must be hex (YKT_PSEUDONYM_KEY or "
                             "$CREDENTIALS_DIRECTORY/pseudonym-key)") from None
    if demo:
        log.warning("using the built-in DEMO pseudonymisation key: not for production")
        return DEMO_PSEUDONYM_KEY
    raise ValueError("no pseudonymisation key: set YKT_PSEUDONYM_KEY or provide "
                     "$CREDENTIALS_DIRECTORY/pseudonym-key (or terminal.demo = true)")
