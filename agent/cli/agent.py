"""``ykt agent run|status``, ``ykt config validate``, ``ykt journal verify|show``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import add_command, load_or_report
from agent.config import AgentConfig, ConfigFileError, load_config
from agent.errors import EXIT_USAGE, YktError, exit_code
from agent.journal import Journal
from agent.logsetup import configure as configure_logging
from agent.rules import RuleSetError, load_ruleset
from profiles import profile_path

__all__ = ["register"]


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2) if args.json else text)


def _load(args: argparse.Namespace) -> AgentConfig | None:
    return load_or_report(args.config)


def _run(args: argparse.Namespace) -> int:
    from agent.config_checks import startup_problems
    from agent.daemon import Terminal

    cfg = _load(args)
    if cfg is None:
        return 2
    configure_logging(args.verbose, default=logging.INFO, terminal=cfg.terminal.id)
    problems = startup_problems(cfg, args.config)     # checked before anything is created
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        print("the terminal did not start", file=sys.stderr)
        return 2
    try:
        terminal = Terminal(cfg)
    except (YktError, FileNotFoundError) as err:
        print(f"error: {err}\nthe terminal did not start", file=sys.stderr)
        return exit_code(err) if isinstance(err, YktError) else EXIT_USAGE
    try:
        return terminal.run_forever()
    except YktError as err:      # DataDirBusy (another daemon), a device or journal at start
        print(f"error: {err}\nthe terminal did not start", file=sys.stderr)
        return exit_code(err)


def _validate(args: argparse.Namespace) -> int:
    """Validate a config file and the profile it names (rules + test vectors)."""
    from agent.config_checks import startup_problems
    from agent.policy.calendar_part import calendar_warning

    if not args.config and not args.profile:
        print("ykt config validate: give a config file (e.g. /etc/ykt/terminal.toml) "
              "or --profile NAME", file=sys.stderr)
        return 2
    problems: list[str] = []
    warnings: list[str] = []
    cfg = None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigFileError as err:
            problems += err.problems
        else:
            problems += startup_problems(cfg, args.config)
    profiles = list(args.profile or [])
    if cfg is not None and not profiles:
        profiles = [cfg.terminal.profile]
    for name in profiles:
        try:
            rs = load_ruleset(profile_path(name))
            if not args.json:
                print(f"{rs.source}: ok ({len(rs.rules)} rules, {len(rs.spec.vector)} vectors)")
            if rs.uses_calendar:       # flagged, not refused: the bundle may carry one
                warnings.append(f"{rs.source}: {calendar_warning(rs, None)} (until a policy "
                                "bundle brings a calendar part)")
        except ConfigFileError as err:
            problems += err.problems
        except (RuleSetError, FileNotFoundError) as err:
            problems.append(str(err))
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, "warnings": warnings},
                         ensure_ascii=False))
    else:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        if not problems and args.config:
            print(f"{args.config}: ok")
    return 2 if problems else 0


def _open_journal(args: argparse.Namespace) -> Journal | None:
    """The configured terminal's journal, or None (reported) if it does not exist yet:
    inspecting must never create an empty journal."""
    cfg = _load(args)
    if cfg is None:
        return None
    if not cfg.journal_path.exists():
        print(f"error: no journal at {cfg.journal_path} (has terminal {cfg.terminal.id} "
              "run with this config?)", file=sys.stderr)
        return None
    return Journal(cfg.journal_path, cfg.terminal.id)


def _verify(args: argparse.Namespace) -> int:
    j = _open_journal(args)
    if j is None:
        return 2
    path = j.path
    breaks = j.verify()
    data = {"journal": str(path), "last_seq": j.last_seq, "acked_seq": j.acked_seq,
            "outbox": j.pending_count, "breaks": [{"seq": b.seq, "problem": b.problem}
                                                  for b in breaks]}
    text = (f"{path}: {j.last_seq} records, acked up to {j.acked_seq}, "
            f"{j.pending_count} pending; chain " + ("verifies" if not breaks else
                                                     f"BROKEN at {len(breaks)} place(s)"))
    for b in breaks[:20]:
        text += f"\n  seq {b.seq}: {b.problem}"
    _emit(args, data, text)
    j.close()
    return 1 if breaks else 0


def _show(args: argparse.Namespace) -> int:
    j = _open_journal(args)
    if j is None:
        return 2
    recs = j.records(max(0, j.last_seq - args.last), args.last)
    if args.json:
        print(json.dumps([{"seq": r.seq, "hash": r.hash, "body": r.body} for r in recs],
                         ensure_ascii=False, indent=2))
    else:
        for r in recs:
            b = r.body
            print(f"{r.seq:>7} {b.get('time', '')} {'ACCEPT' if b.get('accepted') else 'DENY  '} "
                  f"{b.get('reason', ''):<16} {b.get('product', ''):<14} "
                  f"{b.get('amount', 0) / 100:>6.2f} {b.get('rule', '')}")
    j.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    """Write the journal from ``--since`` (default: the first record the hub has not
    acknowledged) to an archive for ``ykt hub import`` (sync/archive.py)."""
    from sync.acks import UplinkIdentity
    from sync.archive import write_archive

    cfg = _load(args)
    if cfg is None:
        return 2
    j = _open_journal(args)
    if j is None:
        return 2
    try:
        identity = (UplinkIdentity.load(cfg.identity.dir) if cfg.identity.dir is not None
                    else None)
        since = args.since if args.since is not None else j.acked_seq + 1
        header = write_archive(j, cfg.terminal.id, Path(args.to), since=since,
                               identity=identity)
    except OSError as err:
        print(f"ykt journal export: cannot write {args.to}: {err.strerror or err}",
              file=sys.stderr)
        return 1
    finally:
        j.close()
    text = (f"{args.to}: records {header['from']}..{header['to']} of {header['terminal']} "
            f"in {header['batches']} {'signed ' if header['signed'] else ''}batches; "
            "import at the hub with `ykt hub import`")
    if not header["batches"]:
        text = f"{args.to}: nothing to export from seq {since} (everything is acknowledged)"
    _emit(args, header, text)
    return 0


def journal_stats(j: Journal, by: str, tz: str = "Asia/Shanghai") -> dict[str, int]:
    """Count journaled decisions by local ``hour`` (accepted entries), ``reason`` or
    ``product`` (accepted only). Events (not_entered, fire_alarm) are counted by ``event``."""
    from collections import Counter
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    counts: Counter[str] = Counter()
    after = 0
    while batch := j.records(after, 5000):
        for r in batch:
            b = r.body
            if by == "event":
                if "event" in b:
                    counts[str(b["event"])] += 1
            elif "event" in b:
                continue
            elif by == "reason":
                counts[str(b.get("reason"))] += 1
            elif b.get("accepted"):
                if by == "product":
                    counts[str(b.get("product"))] += 1
                else:
                    counts[r.wall_time.astimezone(zone).strftime("%Y-%m-%d %H:00")] += 1
        after = batch[-1].seq
    return dict(sorted(counts.items()))


def _stats(args: argparse.Namespace) -> int:
    j = _open_journal(args)
    if j is None:
        return 2
    counts = journal_stats(j, args.by)
    j.close()
    _emit(args, counts, "\n".join(f"{k:<20} {v:>7}" for k, v in counts.items()) or "(none)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from agent.store import PolicyStore
    from agent.store_generations import active_generation

    cfg = _load(args)
    if cfg is None:
        return 2
    data: dict[str, Any] = {"terminal": cfg.terminal.id, "profile": cfg.terminal.profile}
    if cfg.journal_path.exists():
        j = Journal(cfg.journal_path, cfg.terminal.id)
        data.update(last_seq=j.last_seq, acked_seq=j.acked_seq, outbox=j.pending_count)
        j.close()
    # once a bundle has been applied the data lives in a generation file, not store.db
    if active_generation(cfg.store_path).exists():
        s = PolicyStore(cfg.store_path)
        data.update(policy=s.info.label, **s.counts(), unmerged=s.overlay_rows())
        s.close()
    _emit(args, data, "\n".join(f"{k:>12}: {v}" for k, v in data.items()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # --config defaults to the embedded demo configuration here
    demo = {"default": None, "config_help": "terminal config file (TOML); default: embedded "
            "demo defaults"}

    agent = sub.add_parser("agent", help="run or inspect the terminal daemon")
    asub = agent.add_subparsers(dest="agent_cmd", metavar="ACTION", required=True)
    add_command(asub, "run", _run, "run the terminal daemon until SIGTERM", **demo)
    add_command(asub, "status", _status, "journal position, outbox depth, applied policy",
                **demo)

    config = sub.add_parser("config", help="configuration files")
    csub = config.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    p = csub.add_parser("validate", help="validate a config file and its profile's rules")
    p.add_argument("config", nargs="?", help="terminal config file (TOML)")
    p.add_argument("--profile", action="append", help="also validate this profile (name/path)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_validate)

    journal = sub.add_parser("journal", help="the local journal")
    jsub = journal.add_subparsers(dest="journal_cmd", metavar="ACTION", required=True)
    p = add_command(jsub, "export", _export, "records the hub has not acknowledged, to a "
                    "file for `ykt hub import` (a terminal offline for weeks)",
                    **demo, required=True)
    p.add_argument("--to", required=True, help="archive file to write (e.g. on a USB stick)")
    p.add_argument("--since", type=int, default=None,
                   help="first seq (default: the first one not acknowledged)")
    add_command(jsub, "verify", _verify, "verify the hash chain and sequence", **demo)
    p = add_command(jsub, "show", _show, "the latest records (no personal data is stored)",
                    **demo)
    p.add_argument("--last", type=int, default=20, help="how many records (default 20)")
    p = add_command(jsub, "stats", _stats, "counts: accepted entries per hour, by "
                    "reason/product", **demo)
    p.add_argument("--by", choices=["hour", "reason", "product", "event"], default="hour")
