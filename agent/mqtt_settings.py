"""How to reach the MQTT broker: the ``[mqtt]`` section of the agent's config, and the hub's
connection settings.

A neutral module: :mod:`agent.config` builds its ``[mqtt]`` section on it and
:mod:`sync.link` takes it, so the configuration layer never imports ``sync`` (see
``docs/architecture.md``). Pydantic only, no MQTT client.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.keys import read_secret

__all__ = ["AGENT_MAX_PACKET", "BROKER_MAX_PACKET", "CREDENTIAL_FILES", "MANIFEST_MAX_BYTES", "PASSWORD_CREDENTIAL",
           "PASSWORD_ENV", "MqttSettings"]

PASSWORD_ENV = "YKT_MQTT_PASSWORD"
"""Environment variable holding the MQTT password (never the config file)."""
PASSWORD_CREDENTIAL = "mqtt-password"
"""File name of the password in systemd's ``$CREDENTIALS_DIRECTORY``."""
CREDENTIAL_FILES = {"tls_ca_file": "mqtt-ca.crt", "tls_cert_file": "mqtt-client.crt",
                    "tls_key_file": "mqtt-client.key"}
"""File names of the TLS files in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``),
used when the settings name none."""
MANIFEST_MAX_BYTES = 192 * 1024
"""Largest signed policy manifest (envelope) a publisher sends and a terminal accepts."""
BROKER_MAX_PACKET = 8 * 1024 * 1024
"""The broker's ``max_packet_size`` (``ykt hub broker-config``) and the default limit of a
hub or publisher connection, bytes: a full tx batch (5000 records of up to ~1.5 KB each
as JSON) fits."""
AGENT_MAX_PACKET = MANIFEST_MAX_BYTES + 8 * 1024
"""A terminal's MQTT 5 Maximum Packet Size, bytes: the largest thing it receives is a
manifest; 8 KiB leave room for the topic and properties."""


class MqttSettings(BaseModel):
    """How to reach the broker (the ``[mqtt]`` config section).

    The password is never part of the config: it comes from the environment variable
    ``YKT_MQTT_PASSWORD`` or the file ``$CREDENTIALS_DIRECTORY/mqtt-password``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="broker host name or address")
    port: int = Field(default=1883, ge=1, le=65535, description="broker TCP port (8883 for TLS)")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds")
    tls_ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) to verify the broker; enables TLS")
    tls_cert_file: Path | None = Field(
        default=None, description="this client's certificate (PEM) for mutual TLS")
    tls_key_file: Path | None = Field(
        default=None, description="this client's private key (PEM) for mutual TLS")
    username: str | None = Field(
        default=None, description="MQTT user name; the password comes from YKT_MQTT_PASSWORD or "
                          "$CREDENTIALS_DIRECTORY/mqtt-password")
    max_packet_size: int = Field(
        default=BROKER_MAX_PACKET, ge=1024, le=268435455,
        description="MQTT 5 Maximum Packet Size sent in CONNECT: the broker sends nothing "
                    "larger, and larger messages are dropped before parsing, bytes")
    reconnect_min_s: float = Field(default=0.5, gt=0, le=600,
                                   description="first reconnect wait, seconds")
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600,
                                   description="longest reconnect wait, seconds")

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("tls_cert_file needs tls_ca_file (mutual TLS needs TLS)")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def with_identity(self, identity_dir: Path | None) -> MqttSettings:
        """These settings with the TLS files of a terminal identity directory
        (``ca.crt``, ``terminal.crt``, ``terminal.key``, see :mod:`agent.identity`) where
        they name none; unchanged without a directory."""
        if identity_dir is None:
            return self
        d = Path(identity_dir)
        return self._fill({"tls_ca_file": d / "ca.crt", "tls_cert_file": d / "terminal.crt",
                           "tls_key_file": d / "terminal.key"})

    def with_credentials(self) -> MqttSettings:
        """These settings with the TLS files found in ``$CREDENTIALS_DIRECTORY``
        (:data:`CREDENTIAL_FILES`) where they name none and the file exists."""
        cred = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred:
            return self
        found = {k: Path(cred) / name for k, name in CREDENTIAL_FILES.items()
                 if (Path(cred) / name).exists()}
        return self._fill(found)

    def _fill(self, files: dict[str, Path]) -> MqttSettings:
        if self.tls_ca_file is not None or not files.get("tls_ca_file"):
            return self
        update: dict[str, Path] = {"tls_ca_file": files["tls_ca_file"]}
        if self.tls_cert_file is None and "tls_cert_file" in files and "tls_key_file" in files:
            update |= {"tls_cert_file": files["tls_cert_file"],
                       "tls_key_file": files["tls_key_file"]}
        return self.model_copy(update=update)

    def password(self) -> str | None:
        """The password from ``$YKT_MQTT_PASSWORD`` or ``$CREDENTIALS_DIRECTORY/mqtt-password``.

        Returns ``None`` when neither is set. Raises ``OSError`` if the credentials file
        exists but cannot be read.
        """
        return read_secret(PASSWORD_CREDENTIAL, PASSWORD_ENV)
