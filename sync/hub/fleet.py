"""``ykt hub fleet``: one line per terminal, from the hub's database (SQLite or PostgreSQL).

What each terminal last said (kept when it goes offline), its policy against the latest
published on its channel, its outbox and how old its oldest unsynced record is, and its
clock offset measured by a round trip (:mod:`sync.hub.cmd`) with the error bound.
``--offline``, ``--stale``, ``--alarms`` keep only the terminals that match (any of the
given) and exit 1 when there is one, for alerting scripts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TypedDict

from agent.journal import parse_utc, utc_stamp
from agent.textcols import pad
from sync.hub.fleetstore import FleetSnapshot

__all__ = ["FleetRow", "fleet_rows", "load_fleet", "register", "render"]


class FleetRow(TypedDict):
    """One terminal in ``ykt hub fleet`` (and the web console). Times are RFC 3339 UTC
    strings by the hub's clock, ages and offsets seconds; None = not known."""

    terminal: str
    online: bool            # status not "offline" and heard within --offline-after
    last_seen: str | None   # last status or command result received
    offline_since: str | None
    state_as_of: str | None  # when the status the fields below come from was received
    profile: str
    policy: str             # applied, e.g. "city/370302/bus@7" ("" = never reported)
    policy_channel: str
    policy_version: int | None
    policy_latest: int | None   # latest version seen published on that channel
    policy_latest_at: str | None  # when the hub first saw that version published
    policy_behind: int | None   # latest − applied
    policy_expires: str     # "" = never
    policy_expired: bool
    policy_state: str
    policy_refusal: str
    stale: bool             # expired, or behind a version published > stale_after_s ago
    outbox: int | None      # records not yet at the hub (as of outbox_as_of)
    outbox_oldest: str | None   # decision time of the oldest of them (terminal's clock)
    outbox_age_s: float | None  # its age by the hub's clock (offset corrected)
    outbox_as_of: str | None    # when the terminal reported it (status or cmd result)
    clock_offset_s: float | None  # terminal decision time − hub time, round trip
    clock_error_s: float | None   # the offset is right within ± this (RTT/2)
    clock_measured_at: str | None
    clock: str              # the terminal's clock quality (synced, rtc…)
    alarms: list[str]


def _stamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


def _utc(t: float | None) -> str | None:
    return None if t is None else utc_stamp(t)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _policy(st: dict[str, Any], latest: dict[str, Any] | None, now: float,
            stale_after_s: float) -> dict[str, Any]:
    label = str(st.get("policy") or "")
    channel, _, ver = label.rpartition("@")
    version = int(ver) if ver.isdigit() else None
    latest_v = None if latest is None else int(latest["version"])
    behind = None if latest_v is None or version is None else max(0, latest_v - version)
    expires = str(st.get("policy_expires") or "")
    exp_t = _stamp(expires)
    expired = exp_t is not None and exp_t <= now
    seen = None if latest is None else float(latest["seen_at"])
    overdue = bool(behind) and seen is not None and now - seen > stale_after_s
    return {"policy": label, "policy_channel": channel, "policy_version": version,
            "policy_latest": latest_v, "policy_latest_at": _utc(seen),
            "policy_behind": behind, "policy_expires": expires,
            "policy_expired": expired, "policy_state": str(st.get("policy_state") or ""),
            "policy_refusal": str(st.get("policy_refusal") or ""),
            "stale": expired or overdue}


def _outbox(st: dict[str, Any], st_at: float | None, reading: dict[str, Any] | None,
            reading_at: float | None, hub_side: dict[str, Any], offset_s: float | None,
            now: float) -> dict[str, Any]:
    """The freshest outbox report (status or command result), refined by what the hub
    holds now: records the terminal had then and the hub has since stored are not
    pending any more."""
    src, at = st, st_at
    if reading is not None and reading_at is not None and (st_at is None or
                                                           reading_at >= st_at):
        src, at = reading, reading_at
    last, acked, depth = _int(src.get("last_seq")), _int(src.get("acked_seq")), \
        _int(src.get("outbox"))
    oldest = src.get("oldest_unsynced") if isinstance(src.get("oldest_unsynced"), str) \
        else None
    contig = _int(hub_side.get("contiguous_seq"))
    same_chain = str(st.get("epoch") or "") == str(hub_side.get("epoch") or "")
    if last is not None and contig is not None and same_chain:
        depth = max(0, last - max(acked or 0, contig))
        if depth == 0:
            oldest = None
    if depth is None and last is not None:
        depth = max(0, last - (acked or 0))
    oldest_t = _stamp(oldest)
    age = None
    if oldest_t is not None:
        age = round(now - (oldest_t - (offset_s or 0.0)), 1)
    elif depth == 0:
        age = 0.0
    return {"outbox": depth, "outbox_oldest": oldest, "outbox_age_s": age,
            "outbox_as_of": _utc(at) if depth is not None else None}


def fleet_rows(report_terminals: dict[str, Any], snapshot: FleetSnapshot, now: float,
               offline_after_s: float = 120.0, stale_after_s: float = 600.0
               ) -> list[FleetRow]:
    """One :class:`FleetRow` per terminal, sorted by id, from the hub store's report
    (``report()["terminals"]``: what the hub holds of each chain) and the fleet tables
    (:meth:`~sync.hub.fleetstore.FleetStore.snapshot`). ``now`` is the hub's time (s);
    a terminal not heard from for ``offline_after_s`` s counts as offline, one still
    behind a version published more than ``stale_after_s`` s ago (a rollout takes
    seconds to minutes) or past its policy's expiry as stale."""
    rows: list[FleetRow] = []
    for tid in sorted(set(report_terminals) | set(snapshot.terminals)):
        hub_side = report_terminals.get(tid) or {}
        f = snapshot.terminals.get(tid)
        if f is None:   # known only from a store written before the fleet tables
            legacy = hub_side.get("status") or {}
            seen = _stamp(hub_side.get("last_seen"))
            f = {"online": legacy.get("state") != "offline", "status": legacy,
                 "status_at": seen, "offline_since": None, "reading": None,
                 "reading_at": None, "clock": None}
        st = f["status"] or {}
        heard = max((t for t in (f["status_at"], f["reading_at"]) if t is not None),
                    default=None)
        online = bool(f["online"]) and heard is not None and now - heard <= offline_after_s
        clock = f.get("clock")
        offset = None if clock is None else clock["offset_us"] / 1e6
        alarms = st.get("alarms")
        row: dict[str, Any] = {
            "terminal": tid, "online": online, "last_seen": _utc(heard),
            "offline_since": _utc(f["offline_since"] if f["offline_since"] is not None
                                  else (None if online or heard is None
                                        else heard + offline_after_s)),
            "state_as_of": _utc(f["status_at"]), "profile": str(st.get("profile") or ""),
            **_policy(st, snapshot.policies.get(str(st.get("policy") or "").rpartition(
                "@")[0]), now, stale_after_s),
            **_outbox(st, f["status_at"], f["reading"], f["reading_at"], hub_side, offset,
                      now),
            "clock_offset_s": offset,
            "clock_error_s": None if clock is None else clock["error_us"] / 1e6,
            "clock_measured_at": None if clock is None else _utc(clock["measured_at"]),
            "clock": str(st.get("clock") or (f["reading"] or {}).get("clock") or ""),
            "alarms": [str(a) for a in alarms] if isinstance(alarms, list) else [],
        }
        rows.append(row)  # type: ignore[arg-type]
    return rows


def load_fleet(db: Path | str, *, now: float | None = None, offline_after_s: float = 120.0,
               stale_after_s: float = 600.0) -> list[FleetRow]:
    """:func:`fleet_rows` of the hub database ``db`` (a SQLite ``Path`` or a PostgreSQL
    URL, as ``--db``), read now (``now`` defaults to the hub's clock, s). Raises
    ``OSError`` when the database cannot be opened (``FileNotFoundError`` for a SQLite
    file that does not exist: nothing is created)."""
    from sync.hub.cli import _open_store
    from sync.hub.fleetstore import open_fleet_store

    if isinstance(db, Path) and not db.exists():
        raise FileNotFoundError(f"{db}: no such hub database")
    store = _open_store(db)
    try:
        fleet = open_fleet_store(db)
        try:
            return fleet_rows(store.report()["terminals"], fleet.snapshot(),
                              time.time() if now is None else now, offline_after_s,
                              stale_after_s)
        finally:
            fleet.close()
    finally:
        store.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``hub fleet`` to the ``ykt`` parser."""
    from sync.hub.cli import _DB_HELP, _db_arg, hub_subparsers

    hs = hub_subparsers(sub)
    fl = hs.add_parser("fleet", help="terminals: online, policy, outbox, clock, alarms",
                       description="One line per terminal. With --offline/--stale/--alarms "
                       "only the terminals matching any of them; exit 1 if there is one.")
    fl.add_argument("--db", required=True, type=_db_arg, help=_DB_HELP)
    fl.add_argument("--offline-after", type=float, default=120.0, metavar="S",
                    help="seconds without news after which a terminal counts as offline")
    fl.add_argument("--stale-after", type=float, default=600.0, metavar="S",
                    help="a terminal behind a version published more than S seconds ago "
                    "is stale (default 600)")
    fl.add_argument("--offline", action="store_true", help="terminals that are offline")
    fl.add_argument("--stale", action="store_true",
                    help="terminals behind the latest published policy (--stale-after), "
                    "or whose policy expired")
    fl.add_argument("--alarms", action="store_true", help="terminals with an alarm")
    fl.add_argument("--json", action="store_true", help="print JSON (a list of rows)")
    fl.set_defaults(func=_fleet)


def _matches(args: argparse.Namespace, r: FleetRow) -> bool:
    return ((args.offline and not r["online"]) or (args.stale and r["stale"])
            or (args.alarms and bool(r["alarms"])))


def _fleet(args: argparse.Namespace) -> int:
    from sync.hub.cli import _err

    try:
        rows = load_fleet(args.db, offline_after_s=args.offline_after,
                          stale_after_s=args.stale_after)
    except OSError as err:
        return _err(str(err))
    filtered = args.offline or args.stale or args.alarms
    if filtered:
        rows = [r for r in rows if _matches(args, r)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print(render(rows, time.time()))
    return 1 if filtered and rows else 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = abs(seconds)
    text = (f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else
            f"{s / 3600:.0f}h" if s < 172800 else f"{s / 86400:.0f}d")
    return text


def _ago(stamp: str | None, now: float) -> str:
    t = _stamp(stamp)
    return "-" if t is None else _age(now - t) + " ago"


COLUMNS = (("terminal", 20, "<"), ("state", 18, "<"), ("policy", 38, "<"),
           ("outbox (as of)", 24, ">"), ("clock offset", 18, ">"), ("alarms", 0, "<"))


def render(rows: list[FleetRow], now: float) -> str:
    """The text table (columns padded by display width: Chinese ids line up)."""
    lines = ["  ".join(pad(name, w, a) if w else name for name, w, a in COLUMNS)]
    for r in rows:
        state = "online" if r["online"] else "offline " + _ago(r["last_seen"], now)
        pol = r["policy"] or "-"
        if r["policy_expired"]:
            pol += " EXPIRED"
        elif r["policy_behind"]:
            pol += f" (latest {r['policy_latest']})"
        if r["policy_refusal"]:
            pol += f" refused:{r['policy_refusal']}"
        out = "-" if r["outbox"] is None else str(r["outbox"])
        if r["outbox"]:
            out += f" oldest {_age(r['outbox_age_s'])}"
        if r["outbox_as_of"] is not None:
            out += f" @{_age(now - (_stamp(r['outbox_as_of']) or now))}"
        off = "-"
        if r["clock_offset_s"] is not None and r["clock_error_s"] is not None:
            off = f"{r['clock_offset_s']:+.3f}±{r['clock_error_s']:.3f}s"
        cells = (r["terminal"], state, pol, out, off, ",".join(r["alarms"]) or "-")
        lines.append("  ".join(pad(c, w, a) if w else c
                               for c, (_n, w, a) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)
