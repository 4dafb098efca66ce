"""Change the running broker's dynamic-security state: add an enrolled terminal, revoke one.

Commands go to ``$CONTROL/dynamic-security/v1`` over a :class:`sync.session.BrokerSession`
that connects with the hub's administrator certificate (``admin.crt``, CN ``ykt-admin``,
the only identity whose role may publish there). The plugin handles a command before it
sends the PUBACK, so an accepted PUBACK means the change is in force; the plugin also
saves it to its JSON file, so it survives a broker restart.

Why revocation takes two steps: with ``use_identity_as_username`` the broker
authenticates by certificate and never asks the plugin about a connecting client, so a
disabled client could reconnect; the CRL (re-read on SIGHUP) refuses its handshake, and
removing its role leaves it no topic at all should it slip in before the reload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from agent.errors import YktError
from agent.mqtt_settings import MqttSettings
from sync.hub.brokerconf import terminal_role
from sync.session import BrokerSession

__all__ = ["CONTROL_TOPIC", "DynsecError", "add_terminal", "revoke_terminal", "run_commands"]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"


class DynsecError(YktError):
    """The broker did not accept a dynamic-security command."""


def run_commands(settings: MqttSettings, commands: list[dict[str, Any]], *,
                 timeout: float = 10.0) -> None:
    """Send ``commands`` in one control message. Raises :class:`DynsecError` if the broker
    refuses it (e.g. the certificate is not the administrator's), ``ConnectionError`` or
    ``TimeoutError`` if it cannot be reached."""
    with BrokerSession(settings, "ykt-admin") as s:
        s.connect(timeout)
        rc = s.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), timeout=timeout)
    if rc >= 0x80:
        raise DynsecError(f"the broker refused the dynamic-security command (reason {rc:#x})")


def add_terminal(settings: MqttSettings, terminal: str, channels: Iterable[str]) -> None:
    """Create (or re-create) ``terminal``'s role and client in the running broker."""
    role = terminal_role(terminal, channels)
    run_commands(settings, [
        {"command": "deleteClient", "username": terminal},
        {"command": "deleteRole", "rolename": role["rolename"]},
        {"command": "createRole", "rolename": role["rolename"], "acls": role["acls"]},
        {"command": "createClient", "username": terminal,
         "roles": [{"rolename": role["rolename"]}]},
    ])


def revoke_terminal(settings: MqttSettings, terminal: str) -> None:
    """Disable ``terminal`` (the broker drops it now) and take away its role."""
    run_commands(settings, [
        {"command": "disableClient", "username": terminal},
        {"command": "removeClientRole", "username": terminal,
         "rolename": f"terminal-{terminal}"},
    ])
