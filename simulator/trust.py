"""The demo's trust set-up: a hub CA, the broker from ``ykt hub broker-config`` and a
terminal enrolled for real over the hub's HTTPS endpoint (``docs/security.md``).

:func:`secure_demo` returns the running TLS broker, the environment for the hub process
(``$CREDENTIALS_DIRECTORY`` holding ``mqtt-ca.crt``, ``mqtt-client.crt`` and
``mqtt-client.key`` — the hub's own certificate, CN ``hub-1``) and the terminal's
identity directory for ``[identity] dir``. The broker's directory lives in a directory
of its own that the ``mosquitto`` user can search (Mosquitto drops root before reading
it); :meth:`SecureDemo.close` removes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.enroll import enroll
from simulator.broker import Mosquitto, free_port
from sync.hub.brokerconf import write_broker_config
from sync.hub.ca import HubCA
from sync.hub.dynsec import add_terminal
from sync.hub.enroll import Issued, issue_token
from sync.hub.web import EnrollmentServer

__all__ = ["SecureDemo", "secure_demo"]


@dataclass
class SecureDemo:
    broker: Mosquitto
    hub_env: dict[str, str]
    terminal_identity: Path
    broker_root: Path
    hub_identity: Path

    def close(self) -> None:
        self.broker.close()
        shutil.rmtree(self.broker_root, ignore_errors=True)


def secure_demo(work: Path, terminal: str, channels: list[str]) -> SecureDemo:
    """CA, broker and an enrolled ``terminal`` under ``work`` (see the module docstring)."""
    ca = HubCA.init(work / "hub-identity")
    broker_root = Path(tempfile.mkdtemp(prefix="ykt-demo-broker-"))
    os.chmod(broker_root, 0o755)
    port = free_port()
    files = write_broker_config(ca, broker_root / "broker", port=port, bind="127.0.0.1",
                                persistence=False)
    broker = Mosquitto.from_broker_config(files.conf, port)
    broker.start()
    admin = ca.paths.dir
    from agent.mqtt_settings import MqttSettings

    admin_settings = MqttSettings(port=port, tls_ca_file=ca.paths.ca_cert,
                                  tls_cert_file=admin / "admin.crt",
                                  tls_key_file=admin / "admin.key")

    def on_issued(issued: Issued) -> None:
        add_terminal(admin_settings, issued.terminal, issued.channels)

    web = EnrollmentServer(ca, "127.0.0.1", free_port(), on_issued=on_issued)
    web.start()
    try:
        token, _ = issue_token(ca, terminal, channels, ttl_s=600)
        ident = work / "terminal-identity"
        enroll(web.url, token, ident)
    finally:
        web.stop()
    cred = work / "hub-credentials"
    cred.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(ca.paths.ca_cert, cred / "mqtt-ca.crt")
    shutil.copyfile(ca.paths.client_cert, cred / "mqtt-client.crt")
    shutil.copyfile(ca.paths.client_key, cred / "mqtt-client.key")
    os.chmod(cred / "mqtt-client.key", 0o600)
    return SecureDemo(broker, {"CREDENTIALS_DIRECTORY": str(cred)}, ident, broker_root,
                      ca.paths.dir)
