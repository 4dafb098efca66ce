"""``ykt hub run | export | report``.

``--db`` is a SQLite file (the default backend) or a PostgreSQL URL
(``postgresql://user@host/dbname``), the store several hub processes share
(:mod:`sync.hub.pgstore`, imported only when such a URL is given).

Other modules add more ``ykt hub …`` subcommands through :func:`hub_subparsers`, which
creates the ``hub`` command once and returns its sub-parsers.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.sdnotify import notify, supervise
from sync.hub import cli_report
from sync.hub.service import Hub
from sync.hub.store import HubStore, SqliteHubStore
from sync.hub.trust import HubTrust
from sync.link import MqttSettings
from sync.topics import validate_terminal_id

__all__ = ["command_group", "fail", "hub_subparsers", "out", "register"]

_ATTR = "_ykt_hub_subparsers"
_DB_HELP = ("SQLite file of the hub, or a PostgreSQL URL postgresql://USER@HOST/DB shared by "
            "several hubs (password from $PGPASSWORD or ~/.pgpass)")


def _db_arg(text: str) -> Path | str:
    """``--db``: a PostgreSQL URL stays a ``str``; anything else is a SQLite ``Path``."""
    return text if text.startswith(("postgresql://", "postgres://")) else Path(text)


def _open_store(db: Path | str) -> HubStore:
    """The store behind ``--db``. Raises ``OSError`` (with a message naming the database
    and what to do) if it cannot be opened."""
    if isinstance(db, Path):
        return SqliteHubStore(db)
    try:
        from sync.hub.pgstore import PgHubStore
    except ImportError as err:
        raise OSError(f"PostgreSQL support is not installed ({err}); install it with "
                      "pip install 'yikatong-edge[pg]'") from err
    return PgHubStore(db)


def _where(store: HubStore, db: Path | str) -> str:
    """``db`` for messages, without a password."""
    return str(getattr(store, "where", db))


def command_group(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                  help_text: str, dest: str
                  ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command ``name`` that only groups subcommands (``ykt hub policy …``): its
    sub-parsers, with ``dest`` naming the chosen one. Alone, it prints its help and
    exits 2 (a usage error)."""
    group = sub.add_parser(name, help=help_text)
    action = group.add_subparsers(dest=dest, metavar=dest.upper())

    def usage(_args: argparse.Namespace) -> int:
        group.print_help()
        return 2

    group.set_defaults(func=usage)
    return action


def hub_subparsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]
                   ) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-parsers of ``ykt hub``, creating the ``hub`` command on first use."""
    hub = sub.choices.get("hub")
    if hub is None:
        hub = sub.add_parser("hub", help="the hub: ingest, store, report",
                             description="The hub that terminals sync with.")
        def hub_help(_args: argparse.Namespace) -> int:
            hub.print_help()
            return 2

        hub.set_defaults(func=hub_help)
    action = getattr(hub, _ATTR, None)
    if not isinstance(action, argparse._SubParsersAction):
        action = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND")
        setattr(hub, _ATTR, action)
    return action


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hub run``, ``hub export`` and ``hub report`` to the ``ykt`` parser."""
    hs = hub_subparsers(sub)
    run = hs.add_parser("run", help="run the hub until SIGTERM/SIGINT")
    run.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    run.add_argument("--host", default=None, help="broker host (default 127.0.0.1)")
    run.add_argument("--port", default=None, type=int, help="broker port (default 1883)")
    run.add_argument("--reconnect-max", default=None, type=float,
                     help="longest wait between broker reconnects, seconds (default 30)")
    run.add_argument("--terminals", default=None,
                     help="comma-separated terminal ids allowed to send (default: any)")
    run.add_argument("--share-group", default="ykt-hub",
                     help="MQTT shared-subscription group of the hub instances")
    run.add_argument("--identity", default=None, type=Path,
                     help="hub identity directory: signed protocol v2 (docs/protocol.md §10)")
    run.add_argument("--clock-probe", default=60.0, type=float, metavar="S",
                     help="measure each online terminal's clock by a round trip every S "
                     "seconds, and when it comes online (0: only then; default 60)")
    run.set_defaults(func=_run)

    rei = hs.add_parser("reincarnate", help="give a restored hub store a new id (run "
                        "after restoring a backup, before starting the hub)")
    rei.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    rei.set_defaults(func=_reincarnate)

    imp = hs.add_parser("import", help="store a terminal's journal archive (`ykt journal "
                        "export`): same checks and exactly-once as over MQTT")
    imp.add_argument("archive", type=Path, help="the archive file")
    imp.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    imp.add_argument("--identity", default=None, type=Path,
                     help="hub identity directory (required for signed archives)")
    imp.add_argument("--json", action="store_true", help="print JSON")
    imp.set_defaults(func=_import)

    exp = hs.add_parser("export", help="dump every stored record")
    exp.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    exp.add_argument("--format", choices=["jsonl"], default="jsonl",
                     help="one JSON object per line (terminal, seq, hash, flagged, body)")
    exp.set_defaults(func=_export)

    rep = hs.add_parser("report", help="counts and problems; with --by or `settlement`: the "
                        "settlement and statistics reports (sync/hub/cli_report.py)")
    rep.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    rep.add_argument("--json", action="store_true", help="print JSON")
    cli_report.add_arguments(rep)
    rep.set_defaults(func=_report)


def fail(msg: str, code: int = 1) -> int:
    """The hub commands' one error style: ``ykt hub: msg`` on stderr; returns ``code``
    (1 a reported failure, 2 a usage or configuration error)."""
    print(f"ykt hub: {msg}", file=sys.stderr)
    return code


def out(args: argparse.Namespace, data: Any, text: str) -> int:
    """Print ``data`` as JSON with ``--json``, else ``text``; returns 0."""
    print(json.dumps(data, ensure_ascii=False, indent=2) if args.json else text)
    return 0


def _err(msg: str) -> int:
    return fail(msg, 2)


def _trust(identity: Path | None) -> HubTrust | int | None:
    """The hub's trust from ``--identity`` (None without one), or exit code 2 (reported)."""
    if identity is None:
        return None
    from agent.identity import IdentityError
    try:
        return HubTrust(identity)
    except IdentityError as err:
        return _err(str(err))


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.reconnect_max is not None:
        overrides["reconnect_max_s"] = args.reconnect_max
        overrides["reconnect_min_s"] = min(0.5, args.reconnect_max)
    try:
        settings = MqttSettings(**overrides)
    except ValidationError as err:
        return _err(f"invalid broker settings: {err}")
    known: set[str] | None = None
    if args.terminals:
        try:
            known = {validate_terminal_id(t.strip()) for t in args.terminals.split(",")
                     if t.strip()}
        except ValueError as err:
            return _err(f"--terminals: {err}")
    trust = _trust(args.identity)
    if isinstance(trust, int):
        return trust
    from sync.hub.fleetstore import open_fleet_store
    try:
        store = _open_store(args.db)
        fleet = open_fleet_store(args.db)       # `ykt hub fleet`'s tables, same database
    except OSError as err:
        return _err(str(err))
    hub = Hub(store, settings, known, share_group=args.share_group, trust=trust, fleet=fleet,
              clock_probe_s=max(0.0, args.clock_probe))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    hub.start()
    try:
        while not hub.wait_ready(1.0):
            if done.is_set():
                return 0
        print(f"hub ready: db={_where(store, args.db)} "
              f"broker={settings.host}:{settings.port}", flush=True)
        # under systemd (Type=notify): ready, then the watchdog while the main loop runs;
        # the ingest itself rides on the MQTT client's thread and is retried by terminals
        notify("READY=1", f"STATUS=ingesting from {settings.host}:{settings.port}")
        supervise(done, lambda: None, f"ingesting from {settings.host}:{settings.port}")
        notify("STOPPING=1")
    finally:
        hub.stop()
        fleet.close()
        store.close()
    return 0


def _import(args: argparse.Namespace) -> int:
    """Feed an archive's batches through the hub's own ingest (checks, exactly-once)."""
    from sync.archive import read_archive

    trust = _trust(args.identity)
    if isinstance(trust, int):
        return trust
    try:
        header, batches = read_archive(args.archive)
    except (OSError, ValueError) as err:
        return _err(str(err))
    try:
        store = _open_store(args.db)
    except OSError as err:
        return _err(str(err))
    hub = Hub(store, MqttSettings(), trust=trust)          # never connected: no MQTT here
    done = {"batches": 0, "stored": 0, "duplicates": 0, "rejected": 0}
    try:
        for payload in batches:
            result = hub.ingest_payload(header["terminal"], payload)
            done["batches"] += 1
            if result is None:
                done["rejected"] += 1
            else:
                done["stored"] += result[1].stored
                done["duplicates"] += result[1].duplicates
    finally:
        store.close()
    summary = {"terminal": header["terminal"], "epoch": header.get("epoch", ""), **done}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.archive}: terminal {header['terminal']}: {done['batches']} batches, "
              f"{done['stored']} records stored, {done['duplicates']} already there, "
              f"{done['rejected']} batches rejected (see `ykt hub report`)")
    return 1 if done["rejected"] else 0


def _open_existing(args: argparse.Namespace) -> HubStore | int:
    """The hub store named by ``--db`` if it exists (never creates one), else exit code 2."""
    if isinstance(args.db, Path) and not args.db.exists():
        return _err(f"{args.db}: no such hub database")
    try:
        return _open_store(args.db)
    except OSError as err:
        return _err(str(err))


def _reincarnate(args: argparse.Namespace) -> int:
    store = _open_existing(args)
    if isinstance(store, int):
        return store
    try:
        old, new = store.store_id, store.reincarnate()
    finally:
        store.close()
    print(f"hub store {_where(store, args.db)}: id {old} -> {new}")
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _open_existing(args)
    if isinstance(store, int):
        return store
    try:
        out = sys.stdout
        for line in store.export():
            out.write(line)
            out.write("\n")
    finally:
        store.close()
    return 0


def _report(args: argparse.Namespace) -> int:
    if cli_report.wanted(args):
        return cli_report.run(args, _open_existing)
    store = _open_existing(args)
    if isinstance(store, int):
        return store
    try:
        rep = store.report()
    finally:
        store.close()
    if args.json:
        print(json.dumps(rep, indent=2, ensure_ascii=False))
        return 0
    print(_human(rep))
    return 0


def _human(rep: dict[str, Any]) -> str:
    t = rep["totals"]
    lines = [f"records: {t['records']}  terminals: {t['terminals']}  "
             f"duplicates rejected: {t['duplicates_rejected']}  "
             f"chain breaks: {t['chain_breaks']}  terminals with gaps: "
             f"{t['terminals_with_gaps']}"]
    if t["rejected"]:
        lines.append("rejected: " + ", ".join(f"{k} {n}" for k, n in
                                             sorted(t["rejected"].items())))
    lines.append("")
    lines.append(f"{'terminal':<20} {'records':>8} {'contig':>8} {'dups':>6} {'breaks':>6}  gap")
    for name, term in rep["terminals"].items():
        gap = term.get("gap")
        gap_s = f"missing {gap['missing_from']}..{gap['missing_to']}" if gap else "-"
        lines.append(f"{name:<20} {term.get('records', 0):>8} "
                     f"{term.get('contiguous_seq', 0):>8} "
                     f"{term.get('duplicates_rejected', 0):>6} "
                     f"{term.get('chain_breaks', 0):>6}  {gap_s}")
        incarnations = term.get("incarnations", [])
        if len(incarnations) > 1:  # a replaced data directory: one chain per epoch
            lines += [f"  epoch {i['epoch'] or '(legacy)'}: {i['records']} records, "
                      f"contiguous {i['contiguous_seq']}" for i in incarnations]
    lines.append("")
    lines.append(f"{'terminal':<20} {'product':<16} {'reason':<20} {'count':>8}")
    for c in rep["counts"]:
        lines.append(f"{c['terminal']:<20} {c['product'] or '-':<16} "
                     f"{c['reason'] or '-':<20} {c['count']:>8}")
    if rep["chain_breaks"]:
        lines.append("")
        lines.append("chain breaks:")
        lines += [f"  {b['terminal']} seq {b['seq']}: {b['problem']}"
                  for b in rep["chain_breaks"]]
    if rep["rejects"]:
        lines.append("")
        lines.append("rejects:")
        lines += [f"  {r['kind']:<18} {r['terminal'] or '?':<20} {r['count']:>6}  "
                  f"latest: {r['last_detail']}" for r in rep["rejects"]]
    return "\n".join(lines)
