"""``ykt card read``: wait for a social security card on a PC/SC reader and show it, masked.

Prints the masked holder (``张*``, ``3701**********1234``), region, generation, validity
and the keyed hashes — never a raw number or name. ``--json`` for scripts. The
pseudonymisation key comes from ``$YKT_PSEUDONYM_KEY`` or
``$CREDENTIALS_DIRECTORY/pseudonym-key`` (hex) like the agent's
(:func:`agent.keys.pseudonym_key`); without one a throw-away key is used and the keys
shown match nothing (a warning says so).

The card is read by the reader monitor (:class:`drivers.pcsc.PcscCardSource`), which also
reads a card already in the field when it starts and refuses two cards at once.

Exit codes: 0 card read, 1 card refused or no card before ``--timeout``, 2 setup error
(pcscd not running, no PSAM, bad option or key).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
from typing import Any

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add ``card read`` to the ``ykt`` sub-parsers."""
    card = sub.add_parser("card", help="social security cards on PC/SC readers")
    actions = card.add_subparsers(dest="card_command", metavar="ACTION")
    read = actions.add_parser("read", help="wait for a card and show its fields, masked")
    read.add_argument("--config", "-c", default=None,
                      help="take reader, psam and psam_reader from this terminal config's "
                           "[cards] options (default: /etc/ykt/terminal.toml when it exists)")
    read.add_argument("--reader", default=None, help="reader name or part of it (default: any)")
    read.add_argument("--psam", default=os.environ.get("YKT_PSAM"),
                      choices=["pcsc", "soft", "test"],
                      help="PSAM: a card in --psam-reader, in-process keys from "
                           "$YKT_PSAM_KEYS, or the published test keys")
    read.add_argument("--psam-reader", default=os.environ.get("YKT_PSAM_READER"),
                      help="the PSAM's reader (with --psam pcsc)")
    read.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a card")
    read.add_argument("--json", action="store_true", help="print JSON")
    read.set_defaults(func=_read)
    card.set_defaults(func=lambda _a: (card.print_help(), 2)[1])


def _pseudonymizer() -> Any:
    """The deployment's key; a throw-away one if none is set. Raises ``ValueError`` for a
    key that is set but not hex."""
    from agent.keys import pseudonym_key, read_secret
    from agent.pseudonym import Pseudonymizer

    if read_secret("pseudonym-key", "YKT_PSEUDONYM_KEY") is None:
        log.warning("no pseudonymisation key (YKT_PSEUDONYM_KEY or $CREDENTIALS_DIRECTORY/"
                    "pseudonym-key): keys shown use a throw-away key and match nothing")
        return Pseudonymizer(os.urandom(16))
    return Pseudonymizer(pseudonym_key(demo=False))


def _read(args: argparse.Namespace) -> int:
    from agent.errors import YktError, exit_code
    from drivers.options import CARD_NEEDS, PcscCardOptions
    from drivers.registry import load_source

    try:
        base = _configured_options(args.config)
        given = {k: v for k, v in (("reader", args.reader), ("psam", args.psam),
                                   ("psam_reader", args.psam_reader)) if v is not None}
        merged = {"reader": "", "psam": "pcsc", "psam_reader": "", **base, **given}
        if merged["psam"] == "pcsc" and not merged["psam_reader"]:
            return _no_psam_reader()
        options = PcscCardOptions(reader=merged["reader"], psam=merged["psam"],
                                  psam_reader=merged["psam_reader"],
                                  needs=frozenset(CARD_NEEDS))
        source = load_source("cards", "pcsc").from_options(options,
                                                           pseudonymizer=_pseudonymizer())
        from drivers.pcsc import PcscCardSource  # importable: the registry loaded it

        assert isinstance(source, PcscCardSource)
    except (YktError, ValueError) as err:  # DriverError, SecretError, bad options, …
        print(f"ykt card read: {err}", file=sys.stderr)
        return exit_code(err) if isinstance(err, YktError) else 2
    got: queue.Queue[Any] = queue.Queue()
    try:
        source.start(got.put)       # the monitor reads a card already present at start too
        presentation = got.get(timeout=args.timeout)
    except queue.Empty:
        if not source.contexts_established:
            print("ykt card read: cannot reach pcscd (is pcscd running?)", file=sys.stderr)
            return 2
        print(f"ykt card read: no card within {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        source.stop()
    out = _describe(presentation)
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>15}: {v}")
    return 0 if presentation.credential is not None else 1


def _configured_options(path: str | None) -> dict[str, Any]:
    """``reader``/``psam``/``psam_reader`` of a terminal config's ``[cards]`` (pcsc)."""
    from pathlib import Path

    from agent.config import load_config

    default = Path("/etc/ykt/terminal.toml")
    if path is None and not default.exists():
        return {}
    cfg = load_config(path or default)
    o = cfg.cards.options
    return {k: getattr(o, k) for k in ("reader", "psam", "psam_reader") if hasattr(o, k)}


def _no_psam_reader() -> int:
    try:
        from smartcard.System import readers

        present = ", ".join(str(r) for r in readers()) or "none"
    except Exception:
        present = "(pcscd not reachable)"
    print("ykt card read: the PSAM is in a reader: give --psam-reader NAME (readers: "
          f"{present}), or --config with [cards] options psam_reader, or --psam test for the "
          "published test keys", file=sys.stderr)
    return 2


def _describe(p: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"reader": p.source.removeprefix("pcsc:"), "apdus": p.apdus}
    cred, rej = p.credential, p.rejection
    if cred is not None:
        out.update(
            result="ok", name=cred.masked_name, id=cred.masked_id, region=cred.region,
            generation=cred.generation,
            valid_from=cred.valid_from.isoformat() if cred.valid_from else None,
            valid_until=cred.valid_until.isoformat() if cred.valid_until else None,
            birth_year=cred.birth_date.year if cred.birth_date else None,
            authenticated_by=cred.authenticated_by, credential_key=cred.credential_key,
            holder_key=cred.holder_key)
    elif rej is not None:
        out.update(result=rej.reason.value, detail=rej.detail)
    return out
