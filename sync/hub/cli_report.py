"""``ykt hub report --by … | ykt hub report settlement --month …``: the settlement and
statistics reports (:mod:`sync.hub.reports`) on the command line.

Without ``--by``, ``--from``/``--to``, ``--format`` or a statement, ``ykt hub report``
keeps printing the store's counts and problems (``sync/hub/cli.py``). Exit codes: 0 done,
1 the database or the output file failed, 2 a bad argument (group, date, month,
timezone) or no such database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

from sync.hub.report_output import (
    FORMATS,
    render_csv,
    render_json,
    render_text,
    write_xlsx,
)
from sync.hub.reports import GROUPS, Report, ReportError, build_report, settlement_statement
from sync.hub.store import HubStore

__all__ = ["add_arguments", "run", "wanted"]


def add_arguments(rep: argparse.ArgumentParser) -> None:
    """The report options, added to the ``hub report`` parser."""
    rep.add_argument("statement", nargs="?", choices=["settlement"],
                     help="settlement: the monthly statement per operator (--month)")
    rep.add_argument("--by", default=None,
                     help=f"comma-separated groups: {','.join(GROUPS)} (hour = local hour "
                          "of the day)")
    rep.add_argument("--from", dest="date_from", default=None, metavar="YYYY-MM-DD",
                     help="first local day (in --tz), inclusive")
    rep.add_argument("--to", dest="date_to", default=None, metavar="YYYY-MM-DD",
                     help="last local day (in --tz), inclusive")
    rep.add_argument("--tz", default="Asia/Shanghai",
                     help="the deployment's timezone (IANA name; default Asia/Shanghai)")
    rep.add_argument("--month", default=None, metavar="YYYY-MM",
                     help="settlement: the local month")
    rep.add_argument("--operator", default=None,
                     help="settlement: this operator only (default: each operator)")
    rep.add_argument("--format", default=None, choices=FORMATS,
                     help="text (default), json, csv or xlsx (xlsx needs --out)")
    rep.add_argument("--out", default=None, type=Path, help="write to this file, not stdout")


def wanted(args: argparse.Namespace) -> bool:
    """True when the arguments ask for a report rather than the store's counts."""
    return bool(args.statement or args.by or args.date_from or args.date_to or args.format
                or args.month or args.operator or args.out)


def _err(msg: str, code: int = 2) -> int:
    print(f"ykt hub report: {msg}", file=sys.stderr)
    return code


def _date(text: str | None, flag: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{flag} {text!r} is not a date YYYY-MM-DD") from None


def _make(args: argparse.Namespace, store: HubStore) -> Report:
    if args.statement == "settlement":
        if not args.month:
            raise ReportError("settlement needs --month YYYY-MM")
        if args.by or args.date_from or args.date_to:
            raise ReportError("settlement takes --month (and --operator), not --by/--from/--to")
        return settlement_statement(store, month=args.month, operator=args.operator,
                                    tz=args.tz)
    if args.month or args.operator:
        raise ReportError("--month and --operator belong to `report settlement`")
    groups = [g.strip() for g in (args.by or "").split(",") if g.strip()]
    return build_report(store, group_by=groups, date_from=_date(args.date_from, "--from"),
                        date_to=_date(args.date_to, "--to"), tz=args.tz)


def run(args: argparse.Namespace,
        open_store: Callable[[argparse.Namespace], HubStore | int]) -> int:
    """Make the report asked for and write it; the exit code."""
    fmt = args.format or ("json" if args.json else "text")
    if fmt == "xlsx" and args.out is None:
        return _err("--format xlsx writes a file: give --out FILE.xlsx")
    store = open_store(args)
    if isinstance(store, int):
        return store
    try:
        report = _make(args, store)
    except ReportError as err:
        return _err(str(err))
    except (sqlite3.Error, OSError) as err:
        return _err(f"reading the hub store failed: {err}", 1)
    except Exception as err:  # psycopg.Error, without importing psycopg for SQLite
        if type(err).__module__.split(".")[0] != "psycopg":
            raise
        return _err(f"reading the hub store failed: {str(err).strip()}", 1)
    finally:
        store.close()
    try:
        if fmt == "xlsx":
            write_xlsx(report, args.out)
            return 0
        text = {"text": render_text, "json": render_json, "csv": render_csv}[fmt](report)
        if args.out is None:
            print(text.removeprefix("\ufeff"))
        else:
            args.out.write_text(text if text.endswith("\n") else text + "\n",
                                encoding="utf-8", newline="")
    except OSError as err:
        return _err(f"cannot write {args.out}: {err.strerror or err}", 1)
    return 0
