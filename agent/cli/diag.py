"""``ykt diag``: check every part of this terminal and say what to do about each failure.

Each check returns a :class:`Check`: ``ok`` (True, False, or None when it does not apply
to this configuration), what was found, and for a failure what to do. A check never
raises: whatever goes wrong inside one is its finding. The checks follow the
configuration: a bus validator with no camera is not asked for one. Part of the
composition root (it opens drivers and the MQTT link). Exit 0 when every configured part
is fine, 1 when one fails, 2 for a configuration file that does not load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigFileError, load_config
from agent.textcols import pad

__all__ = ["Check", "register", "run_checks"]


@dataclass(frozen=True)
class Check:
    """One finding: ``ok`` is None when the part is not configured here."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _config(cfg: AgentConfig, source: str | None) -> Check:
    from agent.config_checks import startup_problems

    problems = startup_problems(cfg, source)
    if problems:
        return Check("config", False, "; ".join(problems), "fix the file, then "
                     "`ykt config validate`")
    return Check("config", True, "files, backends, options and data directory are usable")


def _integrity(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def _journal(cfg: AgentConfig) -> Check:
    from agent.journal import Journal

    if not cfg.journal_path.exists():
        return Check("journal", None, f"no journal yet at {cfg.journal_path}")
    try:
        result = _integrity(cfg.journal_path)
    except sqlite3.DatabaseError as err:
        result = str(err)
    if result != "ok":
        return Check("journal", False, f"SQLite integrity_check: {result}",
                     "stop the agent, keep a copy of the data directory, call support: "
                     "unacknowledged records exist nowhere else")
    j = Journal(cfg.journal_path, cfg.terminal.id)
    try:
        breaks = j.verify()
        detail = (f"{j.last_seq} records, acked up to {j.acked_seq}, "
                  f"{j.pending_count} pending")
    finally:
        j.close()
    if breaks:
        return Check("journal", False, f"{detail}; chain broken at seq {breaks[0].seq}: "
                     f"{breaks[0].problem}", "keep a copy; the hub flags the break too")
    return Check("journal", True, f"{detail}; integrity ok, chain verifies")


def _store(cfg: AgentConfig) -> Check:
    from agent.store_generations import active_generation

    active = active_generation(cfg.store_path)
    if not active.exists():
        return Check("policy store", None, "no policy yet (waits for the hub's first bundle)")
    try:
        result = _integrity(active)
    except sqlite3.DatabaseError as err:
        result = str(err)
    if result != "ok":
        return Check("policy store", False, f"{active}: integrity_check: {result}",
                     "remove the store's files; the next bundle rebuilds it")
    return Check("policy store", True, f"{active.name}: integrity ok")


def _disk(cfg: AgentConfig) -> Check:
    where = cfg.terminal.data_dir if cfg.terminal.data_dir.exists() else Path("/")
    free = shutil.disk_usage(where).free
    need = int(2 * cfg.journal.reserve_mb * 2**20)
    text = f"{free >> 20} MiB free in {where}"
    if free < need:
        return Check("disk", False, text, f"free space: below {need >> 20} MiB the "
                     "terminal may go out of service (docs/operations.md, A full disk)")
    return Check("disk", True, text)


def _readers(cfg: AgentConfig) -> Check:
    if not cfg.cards.enabled or cfg.cards.backend == "sim":
        return Check("card readers", None, f"cards backend {cfg.cards.backend!r}")
    try:
        from smartcard.System import readers

        present = [str(r) for r in readers()]
    except Exception as err:
        return Check("card readers", False, f"pcscd not reachable: {err}",
                     "systemctl start pcscd; is the reader plugged in?")
    want = [getattr(cfg.cards.options, k, "") for k in ("reader", "psam_reader")]
    missing = [w for w in want if w and w not in present]
    if not present or missing:
        return Check("card readers", False, f"present: {present or 'none'}; missing: "
                     f"{missing or 'a reader'}", "check the USB cable and `pcsc_scan`")
    return Check("card readers", True, ", ".join(present))


def _qr_decoder(cfg: AgentConfig) -> Check:
    if not cfg.codes.enabled or cfg.codes.backend == "sim":
        return Check("QR decoder", None, f"codes backend {cfg.codes.backend!r}")
    try:
        import numpy as np
        import segno

        from drivers.registry import load_decoder

        name = str(getattr(cfg.codes.options, "decoder", "zxing") or "zxing")
        decoder = load_decoder(name)()
        qr = segno.make("YKT-DIAG-0001", error="m")
        image = np.array([[0 if dark else 255 for dark in row]
                          for row in qr.matrix_iter(scale=4, border=4)], dtype=np.uint8)
        found = decoder.decode(image)
    except Exception as err:
        return Check("QR decoder", False, f"{type(err).__name__}: {err}",
                     "install the camera extra: pip install 'yikatong-edge[camera]'")
    if "YKT-DIAG-0001" not in found:
        return Check("QR decoder", False, f"{name} read {found} from the test frame",
                     "use the zxing decoder (docs/qr.md)")
    return Check("QR decoder", True, f"{name} reads the built-in test frame")


def _gate(cfg: AgentConfig) -> Check:
    if not cfg.gate.enabled:
        return Check("gate controller", None, "no gate on this terminal")
    from drivers.registry import load_gate

    try:
        gate = load_gate(cfg.gate.backend).from_options(cfg.gate.options)  # type: ignore[arg-type]
    except Exception as err:
        return Check("gate controller", False, f"cannot open it: {err}",
                     "is the agent running (it holds the line)? check the cable and url")
    try:
        ready = gate.wait_ready(3.0)
        detail = f"{cfg.gate.backend}: " + ("answers" if ready else "does not answer in 3 s")
    finally:
        gate.close()
    return Check("gate controller", ready, detail,
                 "" if ready else "check the controller's power and serial cable")


def _gpio(cfg: AgentConfig) -> Check:
    if not cfg.gpio.enabled:
        return Check("GPIO", None, "no GPIO lines configured")
    from drivers.gpio import GpioBoard

    try:
        board = GpioBoard.from_options(cfg.gpio.backend, cfg.gpio.options)
    except Exception as err:
        return Check("GPIO", False, f"lines not claimable: {err}",
                     "is the agent running (it holds the lines)? is the ykt user in "
                     "group gpio?")
    board.close()
    return Check("GPIO", True, f"{cfg.gpio.backend}: every configured line claimable")


def _certificate(cfg: AgentConfig) -> Check:
    path = cfg.mqtt.tls_cert_file
    if path is None and cfg.identity.dir is not None:
        path = cfg.identity.dir / "terminal.crt"
    if path is None or not path.exists():
        return Check("certificate", None, "no client certificate configured")
    from agent.identity import load_certificate

    cert = load_certificate(path)
    left = (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400
    text = f"{path}: valid until {cert.not_valid_after_utc:%Y-%m-%d} ({left:.0f} days)"
    if left < 0:
        return Check("certificate", False, text, "expired: re-enroll with a new token "
                     "(`ykt hub enroll` at the hub, `ykt enroll` here)")
    if left < 7:
        return Check("certificate", False, text, "renewal is overdue: is the hub reachable?")
    return Check("certificate", True, text)


def _clock(cfg: AgentConfig) -> Check:
    from agent.clock import clock_quality

    q = clock_quality().value
    if q == "unsynced":
        return Check("clock", False, "the kernel reports the clock unsynchronised",
                     "check NTP (timedatectl) and the RTC battery; decisions are safe "
                     "(docs/operations.md, The clock)")
    return Check("clock", True, f"clock quality {q}")


HUB_CLOCK_TOLERANCE_S = 5.0
"""``ykt diag`` fails the hub clock check when the offset is surely beyond this (s): the
passback and QR code windows are minutes, a few seconds do not change a decision."""


def _hub_clock(cfg: AgentConfig) -> Check:
    """The clock offset to the hub: the hub's last round-trip measurement, which the
    running daemon keeps (``clock`` on its control socket; :mod:`agent.commands`)."""
    from agent.control import SOCKET_NAME, ask

    name = "clock vs hub"
    if not cfg.mqtt.enabled:
        return Check(name, None, "mqtt disabled: no hub to compare with")
    reply = ask(cfg.terminal.data_dir / SOCKET_NAME, "clock")
    if reply is None:
        return Check(name, None, "unknown: the daemon is not running (start it: systemctl "
                     "start ykt-agent; the hub measures the offset once it is online)")
    offset, error, age = reply.get("offset_s"), reply.get("error_s"), reply.get("age_s")
    if not isinstance(offset, (int, float)) or not isinstance(error, (int, float)):
        return Check(name, None, "unknown: no round trip with the hub yet (is the terminal "
                     "online? `ykt status`; the hub measures on connect and every minute)")
    text = f"offset {offset:+.3f} s ± {error:.3f} s, measured {age} s ago by the hub"
    if abs(offset) - error > HUB_CLOCK_TOLERANCE_S:
        return Check(name, False, text, "set the clock right (timedatectl; NTP, RTC "
                     "battery) — the hub's clock is the reference; if the hub is wrong, "
                     "fix the hub's NTP")
    return Check(name, True, text)


def _sm2() -> Check:
    from agent.codes.algorithms import sm2_backend

    backend = sm2_backend()
    if backend == "none":
        return Check("SM2 (国密)", None, "no SM2 backend (neither tongsuopy nor an SM2-capable "
                     "libcrypto): SM2-signed codes are refused as unsupported")
    what = {"tongsuopy": "tongsuopy (verify and sign)",
            "libcrypto": "the system's libcrypto (verify only)"}.get(backend, backend)
    return Check("SM2 (国密)", True, f"backend: {what}")


CHECKS: list[Callable[[AgentConfig, str | None], Check]] = [
    _config, lambda c, s: _journal(c), lambda c, s: _store(c), lambda c, s: _disk(c),
    lambda c, s: _readers(c), lambda c, s: _qr_decoder(c), lambda c, s: _gate(c),
    lambda c, s: _gpio(c), lambda c, s: _certificate(c), lambda c, s: _clock(c),
    lambda c, s: _hub_clock(c), lambda c, s: _sm2(),
]
"""Every check, in the order a technician works through a terminal."""


def run_checks(cfg: AgentConfig, source: str | None = None,
               extra: list[Callable[[AgentConfig, str | None], Check]] | None = None
               ) -> list[Check]:
    """Every check for ``cfg`` (and ``extra`` ones, e.g. the broker's, which the CLI adds:
    only the composition root reaches ``sync``); one that raises is reported as failed
    with the error."""
    out = []
    for check in [*CHECKS, *(extra or [])]:
        try:
            out.append(check(cfg, source))
        except Exception as err:
            name = getattr(check, "__name__", "check").strip("_<>").replace("lambda", "check")
            out.append(Check(name, False, f"{type(err).__name__}: {err}"))
    return out


def broker_check(cfg: AgentConfig, source: str | None) -> Check:
    """Can this terminal reach its broker (with its TLS settings) within 5 s?"""
    if not cfg.mqtt.enabled:
        return Check("broker", None, "mqtt disabled")
    from sync.link import Link

    link = Link(cfg.mqtt.link_settings(), f"{cfg.terminal.id}-diag-{int(time.time())}")
    link.start()
    try:
        ok = link.wait_connected(5)
    finally:
        link.stop()
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}" + (" (TLS)" if cfg.mqtt.tls_ca_file else "")
    if not ok:
        return Check("broker", False, f"no connection to {where} within 5 s",
                     "check the network, the broker and the terminal's certificate")
    return Check("broker", True, f"connected to {where}")


def _diag(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checks = run_checks(cfg, args.config, extra=[broker_check])
    if args.json:
        print(json.dumps([c.as_dict() for c in checks], ensure_ascii=False, indent=2))
    else:
        for c in checks:
            mark = {True: "ok  ", False: "FAIL", None: "  - "}[c.ok]
            print(f"{mark} {pad(c.name, 16)} {c.detail}")
            if c.ok is False and c.fix:
                print(f"{'':5}{'':16} → {c.fix}")
    return 1 if any(c.ok is False for c in checks) else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("diag", help="check every part of this terminal and say what to do")
    p.add_argument("--config", "-c", default="/etc/ykt/terminal.toml",
                   help="terminal config file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_diag)
