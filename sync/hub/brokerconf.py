"""``ykt hub broker-config``: the Mosquitto configuration, generated from the hub identity.

What it writes into ``--out DIR`` (``docs/security.md`` explains each control):

* ``mosquitto.conf`` — one TLS listener and nothing else: ``require_certificate``,
  ``use_identity_as_username`` (the certificate's CN is the user name),
  ``use_username_as_clientid`` (no client can take another's client id, kick it off and
  fire its will), ``allow_anonymous false``, the hub CA's CRL, ``max_packet_size``, and
  Mosquitto's dynamic-security plugin for authorisation (it checks subscriptions,
  including ``$share/…``, which ``acl_file`` does not);
* ``ca.crt``, ``crl.pem``, ``broker.crt`` and ``broker.key`` (the broker's server
  certificate from the hub CA);
* ``dynsec/dynamic-security.json`` — clients (one per certificate CN) and their roles.

Ownership, because Mosquitto drops root (to ``user``, default ``mosquitto``) *before* it
reads these files: the directory and every file are owned by root, group ``mosquitto``;
``broker.key`` is ``0640`` (readable by the group, never by others); certificates and the
CRL ``0644``; the directory ``0750``; ``dynsec/`` and its JSON belong to ``mosquitto``
itself (``0700``/``0600``) because the plugin rewrites the file (via a ``.new`` file in
the same directory) when a client is added or disabled. When not run as root the files
stay the caller's (a broker started by that same user then reads them).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.identity import load_certificate
from agent.mqtt_settings import BROKER_MAX_PACKET
from sync.hub.ca import ADMIN_NAME, HubCA, new_private_key, write_private_key, write_public
from sync.topics import PREFIX

__all__ = ["BROKER_MAX_PACKET", "DYNSEC_PLUGIN", "BrokerFiles", "acl_roles",
           "dynsec_plugin_path", "terminal_channels", "write_broker_config"]


DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
SHARE_GROUP = "ykt-hub"


def dynsec_plugin_path() -> Path:
    """Where Debian's ``mosquitto`` package put the dynamic-security plugin.

    Asks ``dpkg -L mosquitto``; falls back to the multiarch library directories.
    Raises ``FileNotFoundError`` if it is not installed."""
    try:
        out = subprocess.run(["dpkg", "-L", "mosquitto"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        if line.endswith("/" + DYNSEC_PLUGIN) and Path(line).exists():
            return Path(line)
    for cand in sorted(Path("/usr/lib").glob(f"*/mosquitto*/{DYNSEC_PLUGIN}")) + sorted(
            Path("/usr/lib").glob(f"*/{DYNSEC_PLUGIN}")):
        return cand
    raise FileNotFoundError(f"{DYNSEC_PLUGIN} not found (apt-get install mosquitto)")


def terminal_channels(ca: HubCA, terminal: str) -> list[str]:
    """The policy channels ``terminal`` was enrolled for (``terminals/{id}.channels``)."""
    f = ca.paths.dir / "terminals" / f"{terminal}.channels"
    return sorted(set(f.read_text().split())) if f.exists() else []


def _acl(kind: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": allow}


def terminal_role(terminal: str, channels: Iterable[str]) -> dict[str, Any]:
    """The dynsec role of one terminal: its own topics, the hub status, its channels'
    manifests and online hotlists."""
    t = f"{PREFIX}/t/{terminal}"
    acls = [_acl("publishClientSend", f"{t}/{k}") for k in ("tx", "status", "cmd/result")]
    acls += [_acl("subscribeLiteral", f"{t}/{k}") for k in ("ack", "cmd")]
    acls.append(_acl("subscribeLiteral", f"{PREFIX}/hub/+/status"))
    acls += [_acl("subscribeLiteral", f"{PREFIX}/policy/{c}/manifest") for c in channels]
    acls += [_acl("subscribeLiteral", f"{PREFIX}/online/{c}/hotlist") for c in channels]
    return {"rolename": f"terminal-{terminal}", "acls": acls}


def acl_roles() -> list[dict[str, Any]]:
    """The shared roles: ``hub`` (also the only publisher of online hotlist manifests,
    ``online/#``: it holds the online hotlist key), ``operator`` (publishes offline-signed
    manifests, never online ones) and ``admin`` (the dynamic-security control topic, used
    by ``ykt hub enroll``/``revoke``).
    Manifests are ``policy/#``: a channel has up to 8 levels, which ``+`` would not match."""
    t = f"{PREFIX}/t/+"
    hub = [_acl("publishClientSend", f"{t}/{k}") for k in ("ack", "cmd")]
    hub += [_acl("publishClientSend", f"{PREFIX}/hub/+/status"),
            _acl("publishClientSend", f"{PREFIX}/policy/#"),
            _acl("publishClientSend", f"{PREFIX}/online/#"),
            _acl("subscribeLiteral", f"$share/{SHARE_GROUP}/{t}/tx"),
            _acl("subscribeLiteral", f"{t}/status"),
            _acl("subscribeLiteral", f"{t}/cmd/result"),
            _acl("subscribeLiteral", f"{PREFIX}/policy/#"),   # latest published (fleet)
            _acl("subscribeLiteral", f"{PREFIX}/hub/+/status")]
    operator = [_acl("publishClientSend", f"{PREFIX}/policy/#")]
    admin = [_acl("publishClientSend", "$CONTROL/dynamic-security/#"),
             _acl("subscribeLiteral", "$CONTROL/dynamic-security/v1/response")]
    return [{"rolename": "hub", "acls": hub}, {"rolename": "operator", "acls": operator},
            {"rolename": "admin", "acls": admin}]


def dynsec_document(ca: HubCA, *, hubs: Iterable[str] = (), operators: Iterable[str] = ()
                    ) -> dict[str, Any]:
    """The dynamic-security JSON: default deny for publish and subscribe; one client per
    certificate CN, no passwords (the certificate authenticates)."""
    hub_cn = load_certificate(ca.paths.client_cert).subject.rfc4514_string()
    hub_name = next(p.split("=", 1)[1] for p in hub_cn.split(",") if p.startswith("CN="))
    clients: list[dict[str, Any]] = []
    roles = acl_roles()
    for name in sorted({hub_name, *hubs}):
        clients.append({"username": name, "roles": [{"rolename": "hub"}], "groups": []})
    for name in sorted(set(operators)):
        clients.append({"username": name, "roles": [{"rolename": "operator"}], "groups": []})
    clients.append({"username": ADMIN_NAME, "roles": [{"rolename": "admin"}], "groups": []})
    for term in ca.enrolled():
        role = terminal_role(term, terminal_channels(ca, term))
        roles.append(role)
        clients.append({"username": term, "roles": [{"rolename": role["rolename"]}],
                        "groups": [], "disabled": ca.is_revoked(term)})
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                                 "subscribe": False, "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


@dataclass(frozen=True)
class BrokerFiles:
    """The files ``write_broker_config`` wrote."""

    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def dynsec(self) -> Path:
        return self.dir / "dynsec" / "dynamic-security.json"

    @property
    def crl(self) -> Path:
        return self.dir / "crl.pem"


def _owner(user: str) -> tuple[int, int] | None:
    """(uid of ``user``, its group id) when we are root and it exists, else ``None``."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def install_crl(ca: HubCA, files: BrokerFiles, user: str = "mosquitto") -> None:
    """Copy the hub's current ``crl.pem`` to the broker directory (root:group 0644)."""
    tmp = files.crl.with_name("crl.pem.tmp")
    shutil.copyfile(ca.paths.crl, tmp)
    os.chmod(tmp, 0o644)
    owner = _owner(user)
    if owner is not None:
        os.chown(tmp, 0, owner[1])
    os.replace(tmp, files.crl)


def write_broker_config(ca: HubCA, out: Path, *, port: int = 8883, bind: str = "0.0.0.0",
                        hosts: Iterable[str] = ("localhost", "127.0.0.1"),
                        user: str = "mosquitto", max_packet_size: int = BROKER_MAX_PACKET,
                        hubs: Iterable[str] = (), operators: Iterable[str] = (),
                        persistence: bool = True, plugin: Path | None = None) -> BrokerFiles:
    """Write the broker's configuration into ``out`` (see the module docstring)."""
    files = BrokerFiles(Path(out))
    d = files.dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "dynsec").mkdir(exist_ok=True)
    plugin = plugin or dynsec_plugin_path()
    key = new_private_key()
    write_private_key(d / "broker.key", key)
    os.chmod(d / "broker.key", 0o640)
    write_public(d / "broker.crt", ca.issue_server(key.public_key(), hosts))
    write_public(d / "ca.crt", ca.cert)
    ca.write_crl()
    install_crl(ca, files, user)
    doc = dynsec_document(ca, hubs=hubs, operators=operators)
    files.dynsec.write_text(json.dumps(doc, indent=2) + "\n")
    os.chmod(files.dynsec, 0o600)
    files.conf.write_text("\n".join([
        "# Generated by `ykt hub broker-config`; regenerate rather than edit (docs/security.md).",
        "# Mosquitto drops root before reading the files below: this directory and its files",
        f"# are root:{user} (broker.key 0640, certificates and crl.pem 0644, the directory",
        f"# 0750); dynsec/ and dynamic-security.json belong to {user} (0700/0600) because the",
        "# plugin rewrites them.",
        f"user {user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"max_packet_size {max_packet_size}",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {d}/dynsec/",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        f"plugin {plugin}",
        f"plugin_opt_config_file {files.dynsec}",
        "",
        f"listener {port} {bind}",
        "protocol mqtt",
        f"cafile {d}/ca.crt",
        f"certfile {d}/broker.crt",
        f"keyfile {d}/broker.key",
        f"crlfile {files.crl}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "",
    ]))
    os.chmod(files.conf, 0o644)
    owner = _owner(user)
    if owner is not None:
        uid, gid = owner
        for p in (d, d / "broker.key", d / "broker.crt", d / "ca.crt", files.crl, files.conf):
            os.chown(p, 0, gid)
        os.chown(d / "dynsec", uid, gid)
        os.chown(files.dynsec, uid, gid)
    os.chmod(d, 0o750)
    os.chmod(d / "dynsec", 0o700)
    return files


def group_name(gid: int) -> str:
    """The name of group ``gid`` (for messages)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
