"""How to reach the MQTT broker: the ``[mqtt]`` section of the agent's config, and the hub's
connection settings.

A neutral module: :mod:`agent.config` builds its ``[mqtt]`` section on it and
:mod:`sync.link` takes it, so the configuration layer never imports ``sync`` (see
``docs/architecture.md``). Pydantic only, no MQTT client.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.keys import read_secret

__all__ = ["PASSWORD_CREDENTIAL", "PASSWORD_ENV", "MqttSettings"]

PASSWORD_ENV = "YKT_MQTT_PASSWORD"
"""Environment variable holding the MQTT password (never the config file)."""
PASSWORD_CREDENTIAL = "mqtt-password"
"""File name of the password in systemd's ``$CREDENTIALS_DIRECTORY``."""


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

    def password(self) -> str | None:
        """The password from ``$YKT_MQTT_PASSWORD`` or ``$CREDENTIALS_DIRECTORY/mqtt-password``.

        Returns ``None`` when neither is set. Raises ``OSError`` if the credentials file
        exists but cannot be read.
        """
        return read_secret(PASSWORD_CREDENTIAL, PASSWORD_ENV)
