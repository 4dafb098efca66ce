"""``ykt hub ca init | identity issue | broker-config | enroll | web | revoke | crl``:
the hub's trust commands (``docs/security.md``).

Commands that talk to the broker (``enroll``/``web`` add the terminal to its dynamic
security, ``revoke`` disables it) connect with the administrator certificate of the
identity directory (``admin.crt``/``admin.key``, CN ``ykt-admin``) to ``--host``/
``--port``; ``--offline`` skips the broker (then regenerate its configuration and restart
it, or the change waits). No command prints a private key; ``enroll`` prints the token
once, in text mode only — ``--json`` output leaves it out unless ``--token-file`` names
where to write it (mode 0600).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from agent.identity import IdentityError
from agent.mqtt_settings import MqttSettings
from sync.hub.brokerconf import (
    BROKER_MAX_PACKET,
    BrokerFiles,
    install_crl,
    terminal_channels,
    write_broker_config,
)
from sync.hub.ca import ADMIN_NAME, CRL_DAYS, HubCA
from sync.hub.cli import fail, hub_subparsers, out
from sync.hub.enroll import DEFAULT_TTL_S, EnrollmentRefused, Issued, issue_token
from sync.hub.web_console import add_console_args

__all__ = ["register"]


def _identity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", required=True, type=Path,
                   help="the hub identity directory (ca.key, ca.crt, hub.crt, …)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8883, help="broker TLS port (default 8883)")
    p.add_argument("--offline", action="store_true",
                   help="do not tell the running broker (regenerate its config instead)")


def admin_settings(ca: HubCA, host: str, port: int) -> MqttSettings:
    """Connection settings with the identity directory's administrator certificate."""
    d = ca.paths.dir
    return MqttSettings(host=host, port=port, tls_ca_file=ca.paths.ca_cert,
                        tls_cert_file=d / "admin.crt", tls_key_file=d / "admin.key")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hs = hub_subparsers(sub)
    ca = hs.add_parser("ca", help="the hub CA")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)
    init = ca_sub.add_parser("init", help="create the hub identity directory and its CA")
    _identity(init)
    init.add_argument("--hub-id", default="hub-1",
                      help="CN of the hub's own client certificate (its MQTT user name)")
    init.set_defaults(func=_ca_init)

    ident = hs.add_parser("identity", help="identities of hub instances and publishers")
    id_sub = ident.add_subparsers(dest="identity_command", metavar="IDENTITY_COMMAND",
                                  required=True)
    issue = id_sub.add_parser("issue", help="issue a key and client certificate")
    issue.add_argument("name", help="the certificate's CN (the MQTT user name)")
    issue.add_argument("--role", choices=["operator", "hub"], required=True)
    issue.add_argument("--out", required=True, type=Path,
                       help="directory for NAME.key (0600), NAME.crt and ca.crt")
    _identity(issue)
    issue.set_defaults(func=_identity_issue)

    bc = hs.add_parser("broker-config", help="write the Mosquitto configuration")
    _identity(bc)
    bc.add_argument("--out", required=True, type=Path, help="the broker's directory")
    bc.add_argument("--port", type=int, default=8883, help="TLS listener port")
    bc.add_argument("--bind", default="0.0.0.0", help="listener address")
    bc.add_argument("--hostname", action="append", default=None,
                    help="DNS name or IP of the broker in its certificate (repeatable; "
                         "default localhost and 127.0.0.1)")
    bc.add_argument("--user", default="mosquitto", help="user Mosquitto drops root to")
    bc.add_argument("--max-packet-size", type=int, default=BROKER_MAX_PACKET,
                    help="broker max_packet_size, bytes (must fit a full tx batch)")
    bc.add_argument("--hub", action="append", default=[],
                    help="CN of a further hub instance (its certificate from identity issue)")
    bc.add_argument("--operator", action="append", default=[],
                    help="CN of an operator allowed to publish manifests")
    bc.set_defaults(func=_broker_config)

    en = hs.add_parser("enroll", help="issue a one-time enrollment token for a terminal")
    en.add_argument("terminal")
    en.add_argument("--channel", action="append", default=[],
                    help="policy channel whose manifests the terminal may read (repeatable)")
    en.add_argument("--ttl", type=float, default=DEFAULT_TTL_S / 3600,
                    help="hours the token stays valid (default 24)")
    en.add_argument("--token-file", type=Path, default=None,
                    help="write the token here (0600) instead of printing it")
    _identity(en)
    en.set_defaults(func=_enroll)

    web = hs.add_parser("web", help="serve enrollment and renewal over HTTPS")
    _identity(web)
    web.add_argument("--listen", default="127.0.0.1", help="address to listen on")
    web.add_argument("--listen-port", type=int, default=8443, help="HTTPS port")
    web.add_argument("--hostname", action="append", default=None,
                     help="name or IP in the server certificate (default the --listen one)")
    _broker(web)
    add_console_args(web)           # --db: the console at /console and /metrics
    web.set_defaults(func=_web)

    rv = hs.add_parser("revoke", help="revoke a terminal now: CRL, broker, reload")
    rv.add_argument("terminal")
    _identity(rv)
    _reload_args(rv)
    _broker(rv)
    rv.set_defaults(func=_revoke)

    crl = hs.add_parser("crl", help=f"re-issue the CRL (valid {CRL_DAYS} days; run daily)")
    _identity(crl)
    crl.add_argument("--days", type=float, default=CRL_DAYS,
                     help=f"validity (nextUpdate), days (default {CRL_DAYS})")
    _reload_args(crl)
    crl.set_defaults(func=_crl)


def _reload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-dir", type=Path, default=None,
                   help="the broker's directory (from broker-config): the CRL is copied there")
    p.add_argument("--broker-pid", type=int, default=None,
                   help="send SIGHUP to this Mosquitto so it re-reads the CRL")
    p.add_argument("--reload-command", default=None,
                   help="or run this to reload it, e.g. 'systemctl reload mosquitto'")


def _ca_init(args: argparse.Namespace) -> int:
    ca = HubCA.init(args.identity, hub_id=args.hub_id)
    return out(args, {"identity": str(args.identity), "ca_fingerprint": ca.fingerprint,
                      "hub_id": args.hub_id, "admin": ADMIN_NAME},
               f"hub CA created in {args.identity}\n  fingerprint sha256 {ca.fingerprint}")


def _identity_issue(args: argparse.Namespace) -> int:
    ca = HubCA(args.identity)
    key, cert = ca.issue_identity(args.name, args.role, args.out)
    return out(args, {"name": args.name, "role": args.role, "certificate": str(cert),
                      "key": str(key)},
               f"{args.role} {args.name}: {cert} (key {key}, mode 0600)")


def _broker_config(args: argparse.Namespace) -> int:
    ca = HubCA(args.identity)
    files = write_broker_config(ca, args.out, port=args.port, bind=args.bind,
                                hosts=args.hostname or ["localhost", "127.0.0.1"],
                                user=args.user, max_packet_size=args.max_packet_size,
                                hubs=args.hub, operators=args.operator)
    return out(args, {"conf": str(files.conf), "dynsec": str(files.dynsec),
                      "crl": str(files.crl), "terminals": ca.enrolled()},
               f"wrote {files.conf} (run: mosquitto -c {files.conf})")


def _enroll(args: argparse.Namespace) -> int:
    ca = HubCA(args.identity)
    try:
        token, expires = issue_token(ca, args.terminal, args.channel, ttl_s=args.ttl * 3600)
    except (EnrollmentRefused, ValueError) as err:
        return fail(str(err), 2)
    data: dict[str, Any] = {"terminal": args.terminal, "channels": sorted(args.channel),
                            "expires": expires, "ca_fingerprint": ca.fingerprint}
    if args.token_file is not None:
        fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        data["token_file"] = str(args.token_file)
        return out(args, data, f"token for {args.terminal} written to {args.token_file}")
    if args.json:
        return fail("--json never prints the token: add --token-file FILE", 2)
    print(token)
    return 0


def _web(args: argparse.Namespace) -> int:
    from sync.hub.dynsec import add_terminal
    from sync.hub.web import EnrollmentServer
    from sync.hub.web_console import web_routes

    ca = HubCA(args.identity)

    def on_issued(issued: Issued) -> None:
        if not args.offline:
            add_terminal(admin_settings(ca, args.host, args.port), issued.terminal,
                         terminal_channels(ca, issued.terminal))

    try:
        routes = web_routes(args, ca)
    except (OSError, ValueError) as err:
        return fail(str(err), 2)
    server = EnrollmentServer(ca, args.listen, args.listen_port,
                              hosts=args.hostname, on_issued=on_issued, routes=routes)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    try:
        print(f"hub web ready: {server.url}", flush=True)
        done.wait()
    finally:
        server.stop()
    return 0


def _reload(args: argparse.Namespace, ca: HubCA) -> list[str]:
    done = []
    if args.broker_dir is not None:
        install_crl(ca, BrokerFiles(args.broker_dir))
        done.append(f"CRL installed in {args.broker_dir}")
    if args.broker_pid is not None:
        os.kill(args.broker_pid, signal.SIGHUP)
        done.append(f"SIGHUP sent to {args.broker_pid}")
    if args.reload_command:
        subprocess.run(shlex.split(args.reload_command), check=True, timeout=60)
        done.append(f"ran {args.reload_command}")
    return done


def _revoke(args: argparse.Namespace) -> int:
    from sync.hub.dynsec import revoke_terminal

    ca = HubCA(args.identity)
    try:
        serials = ca.revoke(args.terminal)
    except IdentityError as err:
        return fail(str(err), 2)
    steps = [f"{serials} certificate(s) in {ca.paths.crl}", *_reload(args, ca)]
    if not args.offline:
        revoke_terminal(admin_settings(ca, args.host, args.port), args.terminal)
        steps.append(f"disabled in the broker at {args.host}:{args.port} (dropped now)")
    return out(args, {"terminal": args.terminal, "revoked_serials": serials, "steps": steps},
               f"revoked {args.terminal}:\n  " + "\n  ".join(steps))


def _crl(args: argparse.Namespace) -> int:
    ca = HubCA(args.identity)
    crl = ca.write_crl(days=args.days)
    steps = _reload(args, ca)
    return out(args, {"crl": str(ca.paths.crl), "next_update":
                      crl.next_update_utc.isoformat() if crl.next_update_utc else None,
                      "steps": steps},
               f"CRL re-issued, valid until {crl.next_update_utc}; " + "; ".join(steps))
