"""``ykt hub policy keygen | rotate | build | publish | serve``.

Operations build signed policy bundles from source files and publish them; terminals
follow them (see ``docs/policy.md``). Secrets never come from arguments: the deployment's
pseudonymisation key comes from ``$YKT_PSEUDONYM_KEY`` or
``$CREDENTIALS_DIRECTORY/pseudonym-key`` (``--demo-key`` for demos); signing keys are PEM
files (mode 0600) named by path.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from sync.hub.cli import fail, out

log = logging.getLogger(__name__)

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hub policy …`` to the ``ykt`` parser."""
    from sync.hub.cli import command_group, hub_subparsers

    ps = command_group(hub_subparsers(sub), "policy", "signed policy bundles: keygen, build, publish, serve", "policy_command")

    kg = ps.add_parser("keygen", help="new signing key (PEM, 0600); --repo makes it root #1")
    kg.add_argument("--out", required=True, type=Path, help="private key file to create")
    kg.add_argument("--alg", default="ES256", help="ES256 (default), EdDSA or SM2")
    kg.add_argument("--repo", type=Path, help="create signer root #1 of this repository")
    kg.add_argument("--json", action="store_true")
    kg.set_defaults(func=_keygen)

    rot = ps.add_parser("rotate", help="new signer root, signed by the current key")
    rot.add_argument("--repo", required=True, type=Path)
    rot.add_argument("--channel", required=True)
    rot.add_argument("--old-key", required=True, type=Path, help="a key of the current root")
    rot.add_argument("--new-key", type=Path,
                     help="the key that signs from now (default: keep the current keys)")
    rot.add_argument("--hotlist-key", type=Path, help="delegate this online hotlist key "
                     "(PEM; its public half goes into the root): it may sign hotlist "
                     "deltas only (ykt hub hotlist)")
    rot.add_argument("--alg", default="ES256")
    rot.add_argument("--json", action="store_true")
    rot.set_defaults(func=_rotate)

    b = ps.add_parser("build", help="build and sign the next version from source files")
    _repo_args(b)
    b.add_argument("--key", required=True, type=Path, help="signing key (PEM)")
    b.add_argument("--alg", default="ES256")
    b.add_argument("--entitlements", type=Path, help="CSV/JSONL: ssn,name,valid_from,valid_until")
    b.add_argument("--hotlist", type=Path, help="CSV/JSONL: card_id or ssn, reason, listed")
    b.add_argument("--remove-hotlist", type=Path, help="CSV/JSONL of hotlist entries to drop")
    b.add_argument("--merge", action="store_true",
                   help="source files add to the last version instead of replacing it")
    b.add_argument("--rules", type=Path, action="append", default=[], help="rule TOML (repeat)")
    b.add_argument("--issuers", type=Path, help="trusted issuer keys (JSON/TOML trust file)")
    b.add_argument("--settings", type=Path, help="terminal settings (JSON object)")
    b.add_argument("--site", type=Path, help="sites: terminals in order, weights (TOML/JSON; "
                   "docs/sites.md)")
    b.add_argument("--site-settled", action="store_true", help="every gate applied the last "
                   "weight change: drop the joint quotas (docs/sites.md)")
    b.add_argument("--renumber", action="store_true", help="allow a change of a site's "
                   "terminal list (kiosk number spaces): only while the site is closed")
    b.add_argument("--reservations", type=Path, help="CSV/JSONL: ssn or holder_key, day, slot")
    b.add_argument("--calendar", type=Path, help="holidays and make-up working days (调休): "
                   "calendar TOML (profiles/calendars/) or a built JSON part")
    b.add_argument("--expires-days", type=float, default=7.0, help="validity in days (7)")
    b.add_argument("--base-url", default="", help="URL prefix of the parts server (…/parts/)")
    b.add_argument("--demo-key", action="store_true",
                   help="hash identifiers with the built-in DEMO key (never in production)")
    b.add_argument("--renew", action="store_true",
                   help="sign a new version even if nothing changed (a later expiry)")
    b.add_argument("--publish", action="store_true", help="publish right after building")
    _mqtt_args(b)
    b.set_defaults(func=_build)

    pub = ps.add_parser("publish", help="publish the latest version retained over MQTT")
    _repo_args(pub)
    _mqtt_args(pub)
    pub.set_defaults(func=_publish)

    srv = ps.add_parser("serve", help="serve parts over HTTP with Range (until Ctrl-C)")
    srv.add_argument("--repo", required=True, type=Path)
    srv.add_argument("--host", default="0.0.0.0")
    srv.add_argument("--port", type=int, default=8080)
    srv.set_defaults(func=_serve)


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, type=Path, help="policy repository directory")
    p.add_argument("--channel", required=True, help="e.g. city/370302/bus")
    p.add_argument("--json", action="store_true")


def _mqtt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt-host", default=None,
                   help="broker host (required unless $YKT_MQTT_HOST names the configured one)")
    p.add_argument("--mqtt-port", type=int, default=None,
                   help="broker port (default $YKT_MQTT_PORT, else 8883 with TLS, 1883 without)")
    p.add_argument("--tls-ca", type=Path, help="CA file: connect with TLS "
                   "(default $CREDENTIALS_DIRECTORY/mqtt-ca.crt if present)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (an operator identity "
                   "from `ykt hub identity issue NAME --role operator`)")
    p.add_argument("--tls-key", type=Path, help="the client certificate's private key")
    p.add_argument("--mqtt-username", default=None,
                   help="MQTT user name (password from $YKT_MQTT_PASSWORD or credentials)")


def _keygen(args: argparse.Namespace) -> int:
    from agent.policy.signing import SigningKey
    from sync.hub.policy import init_root

    try:
        key = SigningKey.generate(args.alg)
        key.save(args.out)
    except (ValueError, ImportError, FileExistsError) as err:
        return fail(f"{args.out}: {err}", 2)
    data: dict[str, Any] = {"key": str(args.out), **key.public.model_dump()}
    text = f"created {args.out} (kid {key.public.kid}, {key.public.alg})"
    if args.repo:
        try:
            init_root(args.repo, [key.public])
        except FileExistsError as err:
            return fail(f"{err}", 2)
        anchor = args.repo / "roots" / "1.json"
        data["anchor"] = str(anchor)
        text += f"\nsigner root #1: {anchor} (install it on terminals as the policy anchor)"
    return out(args, data, text)


def _rotate(args: argparse.Namespace) -> int:
    from agent.policy.signing import SigningKey
    from sync.hub.policy import PolicyRepo

    try:
        old = SigningKey.load(args.old_key, args.alg)
        new = SigningKey.load(args.new_key, args.alg) if args.new_key else None
        hot = SigningKey.load(args.hotlist_key, args.alg) if args.hotlist_key else None
    except (OSError, ValueError) as err:
        return fail(str(err), 2)
    if new is None and hot is None:
        return fail("nothing to rotate: give --new-key and/or --hotlist-key", 2)
    repo = PolicyRepo(args.repo, args.channel)
    try:
        cur = repo.current_root()
        if cur.key(old.public.kid) is None:
            return fail(f"{args.old_key} is not a key of the current signer root", 2)
        root = repo.rotate([old], [new.public] if new else list(cur.keys),
                           threshold=cur.threshold if new is None else 1,
                           hotlist_keys=[hot.public] if hot else None)
    finally:
        repo.close()
    kids = ",".join(k.kid for k in root.keys)
    hot_kids = ",".join(k.kid for k in root.hotlist_keys) or "none"
    return out(args, {"serial": root.serial, "kid": kids, "hotlist_kid": hot_kids},
               f"signer root #{root.serial}: {kids}, online hotlist key {hot_kids} "
               f"(signed by {old.public.kid})")


def _pseudonymizer(demo: bool) -> Any:
    """The deployment's pseudonymiser for ``build`` (the same key sources and hex format
    as :meth:`agent.config.AgentConfig.pseudonym_key`). Raises ``ValueError``."""
    from agent.keys import DEMO_PSEUDONYM_KEY, SecretError, read_secret
    from agent.pseudonym import Pseudonymizer

    secret = read_secret("pseudonym-key", "YKT_PSEUDONYM_KEY")
    if secret:
        try:
            return Pseudonymizer(bytes.fromhex(secret))
        except ValueError:
            raise SecretError("pseudonym key must be hex (YKT_PSEUDONYM_KEY or "
                             "$CREDENTIALS_DIRECTORY/pseudonym-key)") from None
    if demo:
        log.warning("using the built-in DEMO pseudonymisation key: not for production")
        return Pseudonymizer(DEMO_PSEUDONYM_KEY)
    raise SecretError("no pseudonymisation key: set YKT_PSEUDONYM_KEY (hex) or "
                     "$CREDENTIALS_DIRECTORY/pseudonym-key, or pass --demo-key")


def broker_settings(args: argparse.Namespace) -> Any:
    """The broker to publish to: ``--mqtt-host``/``--mqtt-port`` or the configured one
    (``$YKT_MQTT_HOST``/``$YKT_MQTT_PORT``), never a silent default. Raises
    ``ValueError`` (a usage error) when neither names a host."""
    import os

    from sync.link import MqttSettings

    host = args.mqtt_host or os.environ.get("YKT_MQTT_HOST", "")
    if not host:
        raise ValueError("no broker: pass --mqtt-host HOST (and --mqtt-port) or set "
                         "YKT_MQTT_HOST to the deployment's broker")
    port = args.mqtt_port or int(os.environ.get("YKT_MQTT_PORT", "0") or 0) \
        or (8883 if args.tls_ca else 1883)
    return MqttSettings(host=host, port=port, tls_ca_file=args.tls_ca,
                        tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
                        username=args.mqtt_username)


def _where(settings: Any, topic: object) -> str:
    scheme = "mqtts" if settings.tls_ca_file else "mqtt"
    return f"{topic} at {scheme}://{settings.host}:{settings.port}"


def _publish_capped(repo: Any, args: argparse.Namespace, settings: Any) -> int:
    """Publish the latest envelope retained, QoS 1, and check the broker's PUBACK
    (``PermissionError`` when refused); ``ValueError`` when it is over the manifest cap
    terminals accept (:data:`agent.mqtt_settings.MANIFEST_MAX_BYTES`)."""
    from agent.mqtt_settings import MANIFEST_MAX_BYTES
    from sync.session import BrokerSession
    from sync.topics import policy_manifest

    data = repo.latest_envelope()
    if len(data) > MANIFEST_MAX_BYTES:
        raise ValueError(f"the {len(data)}-byte manifest is over the {MANIFEST_MAX_BYTES}-byte "
                         "cap terminals accept; move data into parts served over HTTP")
    with BrokerSession(settings, "") as session:   # the broker names it (its CN)
        session.connect()
        rc = session.publish(str(policy_manifest(args.channel)), data, retain=True)
    if rc >= 0x80:
        raise PermissionError(f"the broker refused the manifest (reason {rc:#x}): publish "
                              "with an operator or hub certificate")
    return int(repo.version)


def _build(args: argparse.Namespace) -> int:
    from agent.policy.signing import SigningKey
    from sync.hub.policy import BundleSources, PolicyRepo, SourceError
    from sync.topics import policy_manifest

    try:
        pseudo = _pseudonymizer(args.demo_key)
        key = SigningKey.load(args.key, args.alg)
        settings = broker_settings(args) if args.publish else None
        repo = PolicyRepo(args.repo, args.channel)
    except (OSError, ValueError) as err:
        return fail(str(err), 2)
    try:
        from sync.hub.site_parts import site_parts
        res = repo.build(BundleSources(
            entitlements=args.entitlements, hotlist=args.hotlist,
            remove_hotlist=args.remove_hotlist, rules=list(args.rules), issuers=args.issuers,
            settings=args.settings, calendar=args.calendar, merge=args.merge,
            parts=site_parts(args.site, args.reservations, pseudo, repo=repo,
                             settled=args.site_settled, renumber=args.renumber)),
            key, pseudonymizer=pseudo, expires_s=args.expires_days * 86400,
            base_url=args.base_url, renew=args.renew, show_progress=not args.json)
        if args.publish:
            _publish_capped(repo, args, settings)
    except SourceError as err:
        return fail(str(err), 2)
    except (OSError, ValueError, LookupError, PermissionError, TimeoutError) as err:
        return fail(str(err))
    finally:
        repo.close()
    data = {"channel": args.channel, "version": res.version, "hash": res.manifest_hash,
            "envelope": str(res.envelope_path), "envelope_bytes": res.envelope_bytes,
            "totals": res.totals, "seconds": round(res.seconds, 2), "published": args.publish,
            "unchanged": res.unchanged, "parts": [p.model_dump() for p in res.parts]}
    if res.unchanged:
        lines = [f"nothing changed since {args.channel}@{res.version}: no new version "
                 "(--renew re-signs it with a later expiry)"]
    else:
        lines = [f"{args.channel}@{res.version} built in {res.seconds:.1f} s "
                 f"({res.totals['entitlements']} entitlements, {res.totals['hotlist']} hotlist)"]
        lines += [f"  {p.name:22} {p.size:>12} B  {p.rows:>9} rows  "
                  f"{'inline' if p.inline else 'http'}  {p.sha256[:16]}" for p in res.parts]
    if args.publish:
        data["published_to"] = _where(settings, policy_manifest(args.channel))
        lines.append(f"published {args.channel}@{res.version} retained on "
                     f"{data['published_to']}")
    return out(args, data, "\n".join(lines))


def _publish(args: argparse.Namespace) -> int:
    from sync.hub.policy import PolicyRepo
    from sync.topics import policy_manifest

    try:
        settings = broker_settings(args)
    except ValueError as err:
        return fail(str(err), 2)
    repo = PolicyRepo(args.repo, args.channel)
    try:
        version = _publish_capped(repo, args, settings)
    except (LookupError, TimeoutError, OSError, ValueError) as err:
        return fail(str(err))
    finally:
        repo.close()
    where = _where(settings, policy_manifest(args.channel))
    return out(args, {"channel": args.channel, "version": version, "published_to": where},
               f"published {args.channel}@{version} retained on {where}")


def _serve(args: argparse.Namespace) -> int:
    from sync.hub.parts_http import PartServer

    server = PartServer(args.repo / "parts", args.host, args.port)
    print(f"serving {args.repo / 'parts'} on {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
