"""``ykt hub console user add|list|remove|passwd|role``, ``ykt hub console audit`` and
``ykt hub trail``.

Secrets never come from arguments (they would show in ``ps`` and shell history): a
password is read from a prompt without echo on a terminal, else the first line of stdin;
the 社会保障号码 / 卡识别码 of ``hub trail`` likewise. The accounts file is ``--accounts
FILE`` or ``IDENTITY/console.db`` with ``--identity DIR`` (what ``ykt hub web`` uses).
Each change is audit-logged as ``cli:<login name>``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from sync.hub.cli import fail, out

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hub console …`` and ``hub trail`` to the ``ykt`` parser."""
    from sync.hub.cli import _DB_HELP, _db_arg, command_group, hub_subparsers
    from sync.hub.console.accounts import ROLES

    hs = hub_subparsers(sub)
    cs = command_group(hs, "console", "console accounts and audit log", "console_command")
    us = command_group(cs, "user", "console accounts: add, list, remove, passwd, role", "user_command")
    add = us.add_parser("add", help="new account; password from a prompt or stdin")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.set_defaults(func=_user_add)
    ls = us.add_parser("list", help="every account and its role")
    ls.set_defaults(func=_user_list)
    rm = us.add_parser("remove", help="delete an account (its sessions end)")
    rm.add_argument("name")
    rm.set_defaults(func=_user_remove)
    pw = us.add_parser("passwd", help="new password from a prompt or stdin")
    pw.add_argument("name")
    pw.set_defaults(func=_user_passwd)
    ro = us.add_parser("role", help="change an account's role")
    ro.add_argument("name")
    ro.add_argument("role", choices=ROLES)
    ro.set_defaults(func=_user_role)
    au = cs.add_parser("audit", help="the audit log, newest first")
    au.add_argument("--user", default=None)
    au.add_argument("--action", default=None, help="e.g. trail, hotlist_add, login_failed")
    au.add_argument("--limit", type=int, default=100)
    au.set_defaults(func=_audit)
    for p in (add, ls, rm, pw, ro, au):
        _accounts_args(p)

    tr = hs.add_parser("trail", help="用卡轨迹: one holder's or card's records (identifier "
                       "from a prompt or stdin, reason required, audit-logged)")
    tr.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    tr.add_argument("--reason", required=True, help="why (case or ticket number)")
    _accounts_args(tr)
    tr.set_defaults(func=_trail)


def _accounts_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accounts", type=Path, default=None, help="console accounts file")
    p.add_argument("--identity", type=Path, default=None,
                   help="hub identity directory (accounts in DIR/console.db)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _accounts(args: argparse.Namespace) -> Any:
    from sync.hub.console.accounts import Accounts

    path = args.accounts or (args.identity / "console.db" if args.identity else None)
    if path is None:
        raise ValueError("name the accounts file: --accounts FILE or --identity DIR")
    return Accounts(path)


def _who() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli:?"


def _secret(prompt: str) -> str:
    """A secret from a no-echo prompt on a terminal, else stdin's first line."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def _with_accounts(args: argparse.Namespace, work: Any) -> int:
    from sync.hub.console.accounts import AccountError

    try:
        accounts = _accounts(args)
    except (ValueError, OSError) as err:
        return fail(str(err), 2)
    try:
        return int(work(accounts))
    except AccountError as err:
        return fail(str(err), 2)
    finally:
        accounts.close()


def _user_add(args: argparse.Namespace) -> int:
    def work(acc: Any) -> int:
        password = _secret(f"password for {args.name}: ")
        a = acc.add(args.name, args.role, password)
        acc.audit(_who(), "user_add", target=a.name, reason=f"role {a.role}")
        return out(args, {"name": a.name, "role": a.role}, f"added {a.name} ({a.role})")
    return _with_accounts(args, work)


def _user_list(args: argparse.Namespace) -> int:
    def work(acc: Any) -> int:
        rows = [{"name": a.name, "role": a.role, "disabled": a.disabled} for a in acc.all()]
        return out(args, rows, "\n".join(f"{r['name']:24} {r['role']}" for r in rows)
                   or "no accounts")
    return _with_accounts(args, work)


def _user_remove(args: argparse.Namespace) -> int:
    def work(acc: Any) -> int:
        acc.remove(args.name)
        acc.audit(_who(), "user_remove", target=args.name)
        return out(args, {"removed": args.name}, f"removed {args.name}")
    return _with_accounts(args, work)


def _user_passwd(args: argparse.Namespace) -> int:
    def work(acc: Any) -> int:
        acc.set_password(args.name, _secret(f"new password for {args.name}: "))
        acc.audit(_who(), "user_passwd", target=args.name)
        return out(args, {"name": args.name}, f"password of {args.name} changed")
    return _with_accounts(args, work)


def _user_role(args: argparse.Namespace) -> int:
    def work(acc: Any) -> int:
        acc.set_role(args.name, args.role)
        acc.audit(_who(), "user_role", target=args.name, reason=f"role {args.role}")
        return out(args, {"name": args.name, "role": args.role},
                   f"{args.name} is now {args.role}")
    return _with_accounts(args, work)


def _audit(args: argparse.Namespace) -> int:
    from sync.hub.console.accounts import entry_dict

    def work(acc: Any) -> int:
        rows = [entry_dict(e) for e in acc.audit_log(limit=args.limit, user=args.user,
                                                     action=args.action)]
        return out(args, rows, "\n".join(
            f"{r['at']} {r['user']:16} {r['action']:14} {r['target']:28} "
            f"{r['outcome']:20} {r['reason']}" for r in rows) or "no entries")
    return _with_accounts(args, work)


def _trail(args: argparse.Namespace) -> int:
    from sync.hub.cli import _open_existing
    from sync.hub.console.trail import TrailRefused, load_pseudonymizer, lookup_trail

    try:
        pseudo = load_pseudonymizer()
    except TrailRefused as err:
        return fail(str(err), 2)
    store = _open_existing(args)
    if isinstance(store, int):
        return store

    def work(acc: Any) -> int:
        try:
            ident, rows = lookup_trail(store, acc, pseudo, user=_who(),
                                       identifier=_secret("社会保障号码 or 卡识别码: "),
                                       reason=args.reason, origin="cli")
        except TrailRefused as err:
            return fail(str(err), 1)
        data = {"kind": ident.kind, "masked": ident.masked,
                "records": [{"time_utc": r.time_utc, "time_beijing": r.time_bj,
                             "terminal": r.terminal, "place": r.place, "product": r.product,
                             "decision": r.decision, "amount_fen": r.amount_fen,
                             "seq": r.seq} for r in rows]}
        lines = [f"{ident.kind} {ident.masked}: {len(rows)} records (Beijing time)"]
        lines += [f"{r.time_bj}  {r.terminal:16} {r.place:24} {r.product or '-':16} "
                  f"{r.decision}" for r in rows]
        return out(args, data, "\n".join(lines))

    try:
        return _with_accounts(args, work)
    finally:
        store.close()
