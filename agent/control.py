"""The daemon's local control socket, and the status a technician reads from it.

``DATA_DIR/control.sock`` is a Unix stream socket (mode 0660: the ``ykt`` user and group
only). A client sends one JSON line ``{"cmd": "status"}`` and reads one JSON line back.
Commands: ``status`` (:func:`terminal_status`), ``sync`` (wake the uplink now), ``clock``
(the hub's last round-trip measurement of this terminal's clock offset,
:meth:`agent.commands.CommandResponder.clock`). Anything
else, or a line that is not a JSON object, gets ``{"error": …}``; nothing a client sends
can stop the daemon. When no daemon answers, ``ykt status`` reads the same fields from the
files (:func:`status_from_files`), so a technician sees the journal, the policy and the
disk also when the service is down.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from agent.config import AgentConfig
from agent.journal import Journal
from agent.sdnotify import worker_stall_s

if TYPE_CHECKING:
    from agent.daemon import Terminal
    from agent.engine import Engine

__all__ = ["SOCKET_NAME", "ControlServer", "alarms", "ask", "control_server", "health", "heartbeat",
           "status_from_files", "terminal_status"]

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 4096            # bytes: a request is one short JSON line


def heartbeat(t: Terminal) -> dict[str, Any]:
    """The status heartbeat's fields of a running terminal: profile, policy, clock quality
    and offset, journal position, alarms, slow taps (:mod:`agent.tap_timing`), and the
    policy downlink's state."""
    j, s = t.journal, t.store
    status: dict[str, Any] = {
        "terminal": t.cfg.terminal.id, "profile": t.ruleset.profile.name,
        "policy": s.info.label if s else "", "clock": t.clock_quality().value,
        "last_seq": j.last_seq if j else 0, "acked_seq": j.acked_seq if j else 0,
        "time": t.clock(),
        "clock_offset_s": round(t.timebase.offset_s, 1) if t.timebase else 0.0,
        "alarms": alarms(t), "policy_warnings": policy_warnings(t), **t.taps.status(),
        "oldest_unsynced": None,
    }
    if j is not None and j.pending_count:      # the outbox's age, not only its depth
        first = j.records(j.acked_seq, 1)
        status["oldest_unsynced"] = first[0].body.get("time") if first else None
    if t.downlink is not None:
        status.update(t.downlink.status())
    return status


def alarms(t: Terminal) -> list[str]:
    """What needs a technician: ``out_of_service``, ``disk_low``, ``journal_failing``,
    ``clock_jump`` (docs/operations.md says what to do about each)."""
    out = t.disk.alarms() if t.disk is not None else []
    if t.engine is not None and t.engine.journal_failing:
        out.append("journal_failing")
    if t.timebase is not None and abs(t.timebase.offset_s) > t.timebase.jump_s:
        out.append("clock_jump")          # the wall clock disagrees with the decision time
    return out


def policy_warnings(t: Terminal) -> list[str]:
    """What central operations should fix in the policy (the terminal decides meanwhile):
    ``calendar_missing``, ``calendar_outdated`` (:func:`calendar_warnings`)."""
    if t.engine is None:
        return []
    return calendar_warnings(t.engine, t.timebase.peek() if t.timebase else t.clock())


def calendar_warnings(engine: Engine, now: float) -> list[str]:
    """``calendar_missing`` (the rules test working days or holidays and no calendar part
    is in force) or ``calendar_outdated`` (the calendar in force was written for other
    years than the local date's, at ``now``, epoch seconds of the decision time)."""
    if not engine.ruleset.uses_calendar:
        return []
    if engine.calendar is None:
        return ["calendar_missing"]
    today = datetime.fromtimestamp(now, ZoneInfo(engine.ruleset.profile.timezone)).date()
    return [] if engine.calendar.covers(today) else ["calendar_outdated"]


def health(t: Terminal) -> str | None:
    """None when the terminal can decide, else the problem: the decision worker has given
    no sign of life for a whole watchdog period (:func:`worker_stall_s`), or the journal
    on disk is no longer the one this daemon writes (:meth:`Journal.check`)."""
    stalled = time.monotonic() - t.worker_beat
    if t.worker_running and stalled > worker_stall_s():
        return f"decision worker stalled for {stalled:.0f} s"
    if t.journal is not None:
        return t.journal.check()
    return None


def control_server(t: Terminal) -> ControlServer:
    """The control socket of ``t`` in its data directory: ``status`` and ``sync``."""
    data_dir = t.cfg.terminal.data_dir

    def sync() -> dict[str, Any]:
        if t.uplink is None:
            return {"error": "this terminal does not sync (mqtt disabled)"}
        t.uplink.notify()
        return {"ok": True, "outbox": t.journal.pending_count if t.journal else 0}

    def clock() -> dict[str, Any]:
        if t.commands is None:
            return {"error": "this terminal does not sync (mqtt disabled)"}
        return dict(t.commands.clock())

    return ControlServer(data_dir / SOCKET_NAME, {
        "status": lambda: terminal_status(heartbeat(t), t.journal, data_dir), "sync": sync,
        "clock": clock})


def journal_fields(journal: Journal, last: int = 5) -> dict[str, Any]:
    """Outbox depth, the oldest unsynced record's time and the last decisions."""
    out: dict[str, Any] = {"last_seq": journal.last_seq, "acked_seq": journal.acked_seq,
                           "outbox": journal.pending_count, "oldest_unsynced": None}
    if journal.pending_count:
        first = journal.records(journal.acked_seq, 1)
        out["oldest_unsynced"] = first[0].body.get("time") if first else None
    recent = journal.records(max(0, journal.last_seq - last), last)
    out["last_decisions"] = [
        {"seq": r.seq, "time": r.body.get("time"), "event": r.body.get("event"),
         "accepted": r.body.get("accepted"), "reason": r.body.get("reason"),
         "product": r.body.get("product")} for r in recent]
    return out


def _disk(path: Path) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {}
    return {"disk_free_mb": usage.free >> 20, "disk_total_mb": usage.total >> 20}


def terminal_status(status: dict[str, Any], journal: Journal | None, data_dir: Path
                    ) -> dict[str, Any]:
    """The daemon's heartbeat fields, with the journal's details and the disk."""
    out = {"source": "daemon", "daemon": "running", **status}
    if journal is not None:
        out.update(journal_fields(journal))
    out.update(_disk(data_dir))
    return out


def status_from_files(cfg: AgentConfig) -> dict[str, Any]:
    """What the files say when no daemon answers (never creates anything)."""
    from agent.store import PolicyStore
    from agent.store_generations import active_generation

    out: dict[str, Any] = {"source": "files", "daemon": "not running",
                           "terminal": cfg.terminal.id, "profile": cfg.terminal.profile}
    if cfg.journal_path.exists():
        j = Journal(cfg.journal_path, cfg.terminal.id)
        try:
            out.update(journal_fields(j))
        finally:
            j.close()
    if active_generation(cfg.store_path).exists():
        s = PolicyStore(cfg.store_path)
        try:
            out.update(policy=s.info.label, policy_expires=s.info.expires,
                       unmerged=s.overlay_rows())
        finally:
            s.close()
    out.update(_disk(cfg.terminal.data_dir if cfg.terminal.data_dir.exists() else Path("/")))
    return out


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            req = json.loads(line)
            cmd = req.get("cmd") if isinstance(req, dict) else None
            fn = self.server.commands.get(cmd) if isinstance(cmd, str) else None
            reply = fn() if fn is not None else {"error": f"unknown command {cmd!r}"}
        except (ValueError, RecursionError):
            reply = {"error": "send one JSON object per line, e.g. {\"cmd\": \"status\"}"}
        except Exception as err:     # a failing command never stops the daemon
            log.exception("control command failed")
            reply = {"error": f"{type(err).__name__}: {err}"}
        self.wfile.write(json.dumps(reply, ensure_ascii=False, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    commands: dict[str, Callable[[], dict[str, Any]]]


class ControlServer:
    """Serves ``commands`` (name → function returning a JSON object) on ``path``."""

    def __init__(self, path: Path, commands: dict[str, Callable[[], dict[str, Any]]]) -> None:
        self.path = Path(path)
        self.commands = commands
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)        # a socket left by a killed daemon
        old = os.umask(0o117)                    # srw-rw----
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        self._server.commands = self.commands
        self._thread = threading.Thread(target=self._server.serve_forever, name="control",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.path.unlink(missing_ok=True)


def ask(path: Path, cmd: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """Send ``cmd`` to the daemon's socket at ``path``; None when no daemon answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None
