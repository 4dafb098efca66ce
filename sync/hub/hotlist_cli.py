"""``ykt hub hotlist add | remove CARD --reason …``: 挂失 to every channel in seconds.

CARD is a card identification code (卡识别码, 32 hex digits) or an 18-character
社会保障号码 (then every card of the holder). It is hashed here with the deployment's
pseudonymisation key (``$YKT_PSEUDONYM_KEY`` or ``$CREDENTIALS_DIRECTORY/pseudonym-key``)
and never printed, stored or logged; the change is signed with the online hotlist key
(``--key``, delegated by ``ykt hub policy rotate --hotlist-key``) and published retained
to each channel's ``ykt/v1/online/{channel}/hotlist`` (:func:`sync.hub.hotlist.publish_change`).
Exit 0 published, 1 not published (broker, key), 2 usage (a malformed CARD, no broker).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hub hotlist …`` to the ``ykt`` parser."""
    from sync.hub.cli import command_group, hub_subparsers
    from sync.hub.cli_policy import _mqtt_args

    hsub = command_group(hub_subparsers(sub), "hotlist", "report a card lost (or found) on every channel now", "hotlist_command")
    for action, text in (("add", "list CARD (挂失): terminals refuse it within seconds"),
                         ("remove", "withdraw CARD's entry (found again, 解挂)")):
        p = hsub.add_parser(action, help=text)
        p.add_argument("card", metavar="CARD",
                       help="卡识别码 (32 hex digits) or 18-character 社会保障号码")
        p.add_argument("--reason", default="lost", help="journaled reason (default lost)")
        p.add_argument("--repo", required=True, type=Path, help="policy repository directory")
        p.add_argument("--key", required=True, type=Path, help="the online hotlist key (PEM)")
        p.add_argument("--alg", default="ES256")
        p.add_argument("--channel", action="append", default=None,
                       help="only this channel (repeat; default every channel)")
        p.add_argument("--demo-key", action="store_true",
                       help="hash with the built-in DEMO key (never in production)")
        p.add_argument("--json", action="store_true")
        _mqtt_args(p)
        p.set_defaults(func=_change, hotlist_action=action)


def _change(args: argparse.Namespace) -> int:
    from agent.policy.signing import SigningKey
    from sync.hub.cli import fail, out
    from sync.hub.cli_policy import _pseudonymizer, broker_settings
    from sync.hub.hotlist import HotlistChange, mqtt_publisher, publish_change
    from sync.hub.policy_sources import SourceError

    try:
        change = HotlistChange(args.hotlist_action, args.card, args.reason)
        settings = broker_settings(args)
        pseudo = _pseudonymizer(args.demo_key)
        key = SigningKey.load(args.key, args.alg)
    except (OSError, ValueError) as err:
        return fail(str(err), 2)
    try:
        res = publish_change(args.repo, change, signer=key, pseudonymizer=pseudo,
                             publish=mqtt_publisher(settings), only=args.channel)
    except SourceError as err:
        return fail(str(err), 2)
    except (LookupError, PermissionError, OSError, TimeoutError, ValueError) as err:
        return fail(str(err))
    where = f"mqtt{'s' if settings.tls_ca_file else ''}://{settings.host}:{settings.port}"
    lines = [f"{change.action} {change.kind} {res.key_prefix}… ({change.reason}) "
             f"published at {where}:"]
    lines += [f"  {ch}: online #{seq} on {res.topics[ch]}" for ch, seq in res.published.items()]
    return out(args, {"action": change.action, "kind": change.kind, "key_prefix":
                      res.key_prefix, "reason": change.reason, "broker": where,
                      "published": res.published, "topics": res.topics,
                      "seconds": round(res.seconds, 3)}, "\n".join(lines))
