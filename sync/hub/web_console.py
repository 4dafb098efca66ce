"""Wiring of the console and ``/metrics`` into ``ykt hub web`` (one listener, one TLS
certificate from the hub CA: ``DESIGN.md``, "One web side for the hub").

``ykt hub web --identity DIR --db HUBDB`` adds:

* ``/console`` — the operations console (:mod:`sync.hub.console`), accounts and audit
  log in ``--console-accounts`` (default ``DIR/console.db``), managed by ``ykt hub
  console user …``;
* ``/metrics`` — when a scrape token is configured (:mod:`sync.hub.web_metrics`);
* 用卡轨迹 — when the pseudonymisation key is a credential of the process
  (``$CREDENTIALS_DIRECTORY/pseudonym-key`` or ``$YKT_PSEUDONYM_KEY``);
* the hotlist form — with that key, ``--policy-repo`` and ``--hotlist-key`` (the online
  hotlist key, :func:`sync.hub.hotlist.publish_change`);
* publishing offline-signed bundles — with ``--policy-repo`` (only its signer roots are
  read, to verify an uploaded envelope; the offline signing key is never here).

Without ``--db`` the web side serves enrollment only, as before.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from sync.hub.ca import HubCA

__all__ = ["add_console_args", "envelope_publisher", "hotlist_publisher", "web_routes"]

log = logging.getLogger(__name__)


def add_console_args(p: argparse.ArgumentParser) -> None:
    """The console's options of ``ykt hub web``."""
    from sync.hub.cli import _DB_HELP, _db_arg

    p.add_argument("--db", type=_db_arg, default=None,
                   help="the hub store: serve the console at /console and /metrics. "
                   + _DB_HELP)
    p.add_argument("--console-accounts", type=Path, default=None,
                   help="console accounts and audit log (default IDENTITY/console.db)")
    p.add_argument("--policy-repo", type=Path, default=None,
                   help="policy repository whose signer roots verify bundles uploaded "
                   "for publishing (no signing key is read)")
    p.add_argument("--hotlist-key", type=Path, default=None,
                   help="the online hotlist key (PEM, 0600; delegated by 'ykt hub policy "
                   "rotate --hotlist-key'): enables the console's hotlist form")
    p.add_argument("--hotlist-alg", default="ES256")
    p.add_argument("--tz", default="Asia/Shanghai", help="the deployment's timezone")


def envelope_publisher(repo: Path, settings: Any, accounts: Any) -> Any:
    """A :data:`sync.hub.console.PolicyPublish`: parse an uploaded envelope, verify it
    against root 1 of ``repo`` (the terminals' anchor) through the roots it carries, refuse
    an expired one or a version not newer than the last this console published for the
    channel (kept in ``accounts``' file), then publish it retained over MQTT with
    ``settings``. Raises ``ValueError`` (bad, unsigned, expired or old envelope),
    ``PermissionError`` (broker refused), ``TimeoutError``/``OSError``."""
    import time

    from agent.errors import YktError
    from agent.mqtt_settings import MANIFEST_MAX_BYTES
    from agent.policy.manifest import Envelope
    from agent.policy.signing import load_root, verify_envelope
    from sync.session import BrokerSession
    from sync.topics import policy_manifest

    def publish(data: bytes) -> str:
        if len(data) > MANIFEST_MAX_BYTES:
            raise ValueError(f"{len(data)} bytes: over the {MANIFEST_MAX_BYTES}-byte manifest "
                             "cap terminals accept")
        try:
            env = Envelope.parse(data)
            anchor = load_root((repo / "roots" / "1.json").read_bytes(), "roots/1.json")
            manifest, _root = verify_envelope(env, anchor)
        except YktError as err:
            raise ValueError(f"not a bundle the terminals would take: {err}") from None
        if manifest.expires_at <= time.time():
            raise ValueError(f"{manifest.channel}@{manifest.version} has expired: build a "
                             "new version")
        last = accounts.published_version(manifest.channel)
        if manifest.version <= last:
            raise ValueError(f"{manifest.channel}@{manifest.version} is not newer than "
                             f"@{last}, published already")
        with BrokerSession(settings, "") as session:
            session.connect()
            rc = session.publish(str(policy_manifest(manifest.channel)), data, retain=True)
        if rc >= 0x80:
            raise PermissionError(f"the broker refused the manifest (reason {rc:#x})")
        accounts.note_published(manifest.channel, manifest.version, env.digest())
        log.info("console published %s@%d", manifest.channel, manifest.version)
        return f"{manifest.channel}@{manifest.version}"

    return publish


def web_routes(args: argparse.Namespace, ca: HubCA) -> list[BaseRoute]:
    """The routes ``ykt hub web`` adds: the console and ``/metrics`` for ``--db``, and
    ``POST /v1/hotlist`` with ``--policy-repo``, ``--hotlist-key`` and API tokens (with or
    without ``--db``). Raises ``OSError`` (store, accounts or key cannot be opened) or
    ``ValueError`` (a bad credential)."""
    from sync.link import MqttSettings

    settings = MqttSettings(host=args.host, port=args.port, tls_ca_file=ca.paths.ca_cert,
                            tls_cert_file=ca.paths.client_cert,
                            tls_key_file=ca.paths.client_key)
    if args.db is None:              # enrollment only, or that and the loss-report endpoint
        if args.policy_repo is None or args.hotlist_key is None:
            return []
        return _loss_report_routes(settings, args, _pseudonymizer_or_none())
    from sync.hub.cli import _open_store
    from sync.hub.console import ConsoleConfig, console_routes
    from sync.hub.console.accounts import Accounts
    from sync.hub.fleetstore import open_fleet_store
    from sync.hub.web_metrics import metrics_route, metrics_token

    store = _open_store(args.db)
    fleet = open_fleet_store(args.db)
    accounts = Accounts(args.console_accounts or ca.paths.dir / "console.db")
    pseudo = _pseudonymizer_or_none()
    publish = (envelope_publisher(args.policy_repo, settings, accounts)
               if args.policy_repo is not None else None)
    from agent.keys import read_secret

    cfg = ConsoleConfig(store=store, accounts=accounts, fleet=fleet, pseudonymizer=pseudo,
                        hotlist=_hotlist_change(settings, args, pseudo), publish=publish, tz=args.tz,
                        session_key=read_secret("console-session-key",
                                                "YKT_CONSOLE_SESSION_KEY")
                        or os.urandom(32).hex())
    routes: list[BaseRoute] = [*console_routes(cfg), *_loss_report_routes(settings, args, pseudo)]
    token = metrics_token()
    if token:
        routes.append(metrics_route(store, token, fleet=fleet))
    else:
        log.warning("no metrics token ($CREDENTIALS_DIRECTORY/metrics-token): /metrics off")
    return routes


def hotlist_publisher(repo: Path, signer: Any, pseudo: Any, publish: Any) -> Any:
    """A :data:`sync.hub.console.HotlistPublish` over
    :func:`sync.hub.hotlist.publish_change` (the function ``ykt hub hotlist`` and
    ``POST /v1/hotlist`` use): every channel of ``repo``, signed with the online hotlist
    key ``signer``, sent by ``publish(topic, payload)``."""
    from sync.hub.hotlist import HotlistChange, publish_change

    def change(action: str, identifier: str, reason: str) -> str:
        res = publish_change(repo, HotlistChange(action, identifier, reason),  # type: ignore[arg-type]
                             signer=signer, pseudonymizer=pseudo, publish=publish)
        return ", ".join(f"{ch} online #{seq}" for ch, seq in sorted(res.published.items()))

    return change


def _hotlist_change(settings: Any, args: argparse.Namespace, pseudo: Any) -> Any:
    """The console's hotlist publisher with ``--policy-repo`` and ``--hotlist-key``, else
    None (the form then says what is missing)."""
    if args.policy_repo is None or args.hotlist_key is None or pseudo is None:
        return None
    from agent.policy.signing import SigningKey
    from sync.hub.hotlist import mqtt_publisher

    signer = SigningKey.load(args.hotlist_key, args.hotlist_alg)
    return hotlist_publisher(args.policy_repo, signer, pseudo, mqtt_publisher(settings))


def _pseudonymizer_or_none() -> Any:
    """The deployment's pseudonymiser from its credential, or None (logged: 用卡轨迹, the
    hotlist form and ``POST /v1/hotlist`` are off then)."""
    from sync.hub.console.trail import TrailRefused, load_pseudonymizer

    try:
        return load_pseudonymizer()
    except TrailRefused as err:
        log.warning("用卡轨迹 and hotlist changes are off: %s", err)
        return None


def _loss_report_routes(settings: Any, args: argparse.Namespace, pseudo: Any
                        ) -> list[BaseRoute]:
    """``POST /v1/hotlist`` for a bank's or SSC centre's loss-reporting system
    (:mod:`sync.hub.hotlist_http`) when ``--policy-repo``, ``--hotlist-key``, the deployment
    key and API tokens (``$CREDENTIALS_DIRECTORY/hotlist-api-tokens``) are all there; else
    none, with one log line saying what is missing. Raises ``OSError``/``ValueError`` for an
    unreadable or bad hotlist key."""
    if args.policy_repo is None or args.hotlist_key is None or pseudo is None:
        return []
    from agent.policy.signing import SigningKey
    from sync.hub.hotlist import mqtt_publisher
    from sync.hub.hotlist_http import HotlistEndpoint, hotlist_routes, read_tokens

    try:
        tokens = read_tokens()
    except ValueError as err:
        log.info("POST /v1/hotlist is off: %s", err)
        return []
    signer = SigningKey.load(args.hotlist_key, args.hotlist_alg)
    return list(hotlist_routes(HotlistEndpoint(args.policy_repo, signer, pseudo,
                                               mqtt_publisher(settings), tokens)))
