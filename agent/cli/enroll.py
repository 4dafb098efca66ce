"""``ykt enroll``: enroll this terminal with its hub, or renew its certificate.

``ykt enroll --hub https://HUB:8443 --token TOKEN [--identity DIR]`` (the token may come
from ``$YKT_ENROLL_TOKEN`` instead, which keeps it out of the process list);
``ykt enroll --hub URL --renew [--force]`` renews once two thirds of the certificate's
validity have passed (run it daily, e.g. from a systemd timer). The token and private
keys are never printed, in text or ``--json`` output. Exit codes: 0 done (or renewal not
due), 1 refused or unreachable, 2 usage; an expired certificate exits 1 and says to
re-enroll with a new token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.enroll import CertificateExpired, EnrollmentError, enroll, renew

__all__ = ["TOKEN_ENV", "register"]

TOKEN_ENV = "YKT_ENROLL_TOKEN"
DEFAULT_DIR = Path("/var/lib/ykt/identity")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("enroll", help="enroll this terminal with the hub, or renew",
                       description=__doc__)
    p.add_argument("--hub", required=True, help="the hub's enrollment URL, https://HOST:PORT")
    p.add_argument("--token", default=None, help=f"one-time token (or ${TOKEN_ENV})")
    p.add_argument("--identity", type=Path, default=DEFAULT_DIR,
                   help=f"identity directory (default {DEFAULT_DIR})")
    p.add_argument("--renew", action="store_true", help="renew the certificate if due")
    p.add_argument("--force", action="store_true", help="with --renew: renew even if not due")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.renew:
            res = renew(args.hub, args.identity, force=args.force)
            if res is None:
                msg = {"renewed": False, "due": False}
                print(json.dumps(msg) if args.json else "certificate not due for renewal")
                return 0
        else:
            token = args.token or os.environ.get(TOKEN_ENV, "")
            if not token:
                print(f"ykt enroll: give --token or ${TOKEN_ENV}", file=sys.stderr)
                return 2
            res = enroll(args.hub, token, args.identity)
    except CertificateExpired as err:
        print(f"ykt enroll: {err}", file=sys.stderr)
        return 1
    except EnrollmentError as err:
        print(f"ykt enroll: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res.as_json(), indent=2))
    else:
        what = "renewed" if res.renewed else "enrolled"
        print(f"{what} as {res.terminal}; certificate valid until {res.not_after:%Y-%m-%d}; "
              f"identity in {res.identity_dir}")
    return 0
