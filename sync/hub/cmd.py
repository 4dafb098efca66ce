"""The hub's side of operations commands (``docs/protocol.md`` §12): measure each
terminal's clock by a round trip and keep the fleet's last known state.

:class:`ClockProbe` sends ``time`` to every online terminal every ``period_s`` (default
60 s) and at once when a terminal comes online (again after 5, 10, 20… s while
unanswered); the terminal answers with its clock readings. With ``t_send``/``t_recv`` the hub's clock when the command left and the
result arrived (the difference taken on the monotonic clock),

    offset = terminal_time − (t_send + t_recv) / 2,   error ≤ RTT / 2,

because the terminal read its clock somewhere between the two. The measurement is stored
(:meth:`~sync.hub.fleetstore.FleetStore.record_clock`) and told to the terminal with a
``clock`` command, which keeps it for ``ykt diag``. A result counts only if it answers a
command this hub instance sent and still waits for (its ``id``), from the terminal it was
sent to, and — when the hub runs protocol v2 — signed by that terminal's enrolled key.
Retained statuses never give an offset: they can be arbitrarily old.

Commands carry this instance's epoch (:attr:`ClockProbe.epoch`, random per process) and a
counter that only grows, so a terminal refuses a replay without looking at any clock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.commands import Command, CommandRefused, encode_command, parse_result
from agent.identity import PrivateKey, PublicKey
from sync.hub.fleetstore import FleetStore
from sync.link import Link, NotConnected
from sync.topics import PREFIX, TerminalTopics, TopicFilter, parse_terminal_topic

__all__ = ["ClockProbe", "Measurement", "attach_probe", "offset_from_round_trip"]

log = logging.getLogger(__name__)

READING_FIELDS = ("clock", "last_seq", "acked_seq", "outbox", "oldest_unsynced", "wall_us")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One round trip: offset and error in µs, RTT in µs, the hub time it was taken (s)."""

    offset_us: int
    error_us: int
    rtt_us: int
    measured_at: float


def offset_from_round_trip(t_send: float, rtt_s: float, terminal_time: float) -> Measurement:
    """``terminal_time − (t_send + t_recv)/2`` with ``t_recv = t_send + rtt_s`` (all s);
    error RTT/2 plus 1 µs of rounding."""
    mid = t_send + rtt_s / 2
    return Measurement(round((terminal_time - mid) * 1e6), round(rtt_s / 2 * 1e6) + 1,
                       round(rtt_s * 1e6), mid)


@dataclass(slots=True)
class _Pending:
    terminal: str
    sent_wall: float
    sent_mono: float


class ClockProbe:
    """Round-trip clock measurements for :class:`~sync.hub.service.Hub`.

    ``key`` signs commands (None: unsigned v1, for terminals without identities);
    ``terminal_key(t)`` gives the public key results of ``t`` must verify with (None: v1).
    ``clock``/``mono`` are the hub's wall and monotonic clocks (s)."""

    TICK_S = 1.0
    """How often the schedule is looked at (s)."""

    def __init__(self, link: Link, fleet: FleetStore, *, key: PrivateKey | None,
                 terminal_key: Callable[[str], PublicKey | None], period_s: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.link, self.fleet, self.key = link, fleet, key
        self.terminal_key = terminal_key
        self.period_s = period_s
        self.clock, self.mono = clock, mono
        self.epoch = secrets.token_hex(16)
        self.stats: dict[str, int] = {"sent": 0, "measured": 0, "ignored_results": 0}
        self._n = 0
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._online: set[str] = set()
        self._due: dict[str, float] = {}      # terminal → when to ask next (monotonic s)
        self._tries: dict[str, int] = {}      # unanswered time commands in a row
        self._warned_at = -1e18
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.measured = threading.Condition()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the schedule thread. Safe to call twice."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="clock-probe", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop probing. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _retry_s(self, tries: int) -> float:
        """Unanswered: ask again after 5, 10, 20… s (a command sent before the terminal
        had subscribed is lost), at most every ``period_s`` (60 s without a period)."""
        return float(min(self.period_s or 60.0, 5.0 * 2.0 ** max(0, tries - 1)))

    def _run(self) -> None:
        while not self._stop.wait(self.TICK_S):
            now = self.mono()
            with self._lock:
                due = [t for t in self._online if self._due.get(t, now) <= now]
            for t in due:
                self._ask(t)
            self._forget_old()

    def _ask(self, terminal: str) -> None:
        with self._lock:
            tries = self._tries.get(terminal, 0) + 1
            self._tries[terminal] = tries
            self._due[terminal] = self.mono() + self._retry_s(tries)
        self.send(terminal, "time")

    # -- commands ------------------------------------------------------------------------
    def send(self, terminal: str, op: str, args: dict[str, int] | None = None) -> str | None:
        """Send ``op`` to ``terminal``; returns its id, None when not connected."""
        with self._lock:
            self._n += 1
            cmd = Command(terminal, self.epoch, self._n, secrets.token_hex(16), op, args)
            payload = encode_command(self.key, cmd)
            if op == "time":
                self._pending[cmd.id] = _Pending(terminal, self.clock(), self.mono())
        try:
            self.link.publish(TerminalTopics(terminal).cmd, payload, qos=1)
        except NotConnected:
            with self._lock:
                self._pending.pop(cmd.id, None)
            return None
        self.stats["sent"] += 1
        return cmd.id

    def _forget_old(self) -> None:
        cutoff = self.mono() - 2 * max(self.period_s, 60.0)
        with self._lock:
            for k in [k for k, p in self._pending.items() if p.sent_mono < cutoff]:
                del self._pending[k]

    def on_result(self, topic: str, payload: bytes) -> None:
        """A ``cmd/result`` arrived (link thread)."""
        recv_mono = self.mono()
        parsed = parse_terminal_topic(topic)
        if parsed is None:
            return
        terminal = parsed[0]
        try:
            msg = parse_result(bytes(payload), self.terminal_key(terminal))
        except (CommandRefused, ValueError) as err:
            self._ignore(terminal, f"result: {err}")
            return
        if msg.get("hub") != self.epoch or msg.get("op") != "time":
            return                # another hub instance's command, or a `clock` answered
        with self._lock:
            pending = self._pending.get(msg["id"])
            if pending is None or pending.terminal != terminal or msg.get("terminal") != terminal:
                pending = None
            else:
                del self._pending[msg["id"]]
        if pending is None:
            self._ignore(terminal, "result answers no command this hub waits for")
            return
        t_us = msg.get("time_us")
        if not isinstance(t_us, int) or isinstance(t_us, bool) or msg.get("ok") is not True:
            self._ignore(terminal, "result without time_us")
            return
        m = offset_from_round_trip(pending.sent_wall, recv_mono - pending.sent_mono, t_us / 1e6)
        self._write(self.fleet.record_clock, terminal, m.offset_us, m.error_us, m.rtt_us,
                    m.measured_at, self.epoch)
        self._write(self.fleet.record_reading, terminal,
                    {k: msg[k] for k in READING_FIELDS if k in msg}, m.measured_at)
        self.stats["measured"] += 1
        with self._lock:
            self._tries[terminal] = 0
            self._due[terminal] = recv_mono + (self.period_s or float("inf"))
        log.debug("terminal %s: clock offset %+.3f s ± %.3f s", terminal, m.offset_us / 1e6,
                  m.error_us / 1e6)
        self.send(terminal, "clock", {"offset_us": m.offset_us, "error_us": m.error_us,
                                      "measured_ms": round(m.measured_at * 1000)})
        with self.measured:
            self.measured.notify_all()

    def _write(self, fn: Callable[..., None], *args: Any) -> None:
        """Store fleet state; a database failure is a WARNING (at most one a minute), not
        an error: the next heartbeat or round trip writes the state again."""
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - sqlite3.Error, psycopg.Error
            self.stats["fleet_write_failures"] = self.stats.get("fleet_write_failures", 0) + 1
            now = self.mono()
            if now - self._warned_at >= 60.0:
                self._warned_at = now
                log.warning("fleet state not stored (%s: %s); kept trying",
                            type(err).__name__, str(err).strip()[:200])

    def _ignore(self, terminal: str, why: str) -> None:
        self.stats["ignored_results"] += 1
        log.debug("terminal %s: %s", terminal, why)

    def wait_measured(self, count: int, timeout: float) -> bool:
        """Wait until :attr:`stats` counts ``count`` measurements (tests)."""
        deadline = self.mono() + timeout
        with self.measured:
            while self.stats["measured"] < count:
                left = deadline - self.mono()
                if left <= 0:
                    return False
                self.measured.wait(left)
        return True

    # -- statuses and manifests ------------------------------------------------------------
    def on_status(self, terminal: str, status: dict[str, Any]) -> None:
        """A terminal's status (already checked by the hub): keep it (an ``offline`` one
        keeps the last known state) and measure a terminal that has just come online."""
        self._write(self.fleet.record_status, terminal, status, self.clock())
        online = status.get("state") != "offline"
        with self._lock:
            new = online and terminal not in self._online
            if online:
                self._online.add(terminal)
            else:
                self._online.discard(terminal)
                self._tries.pop(terminal, None)
        if new:
            self._ask(terminal)

    def on_manifest(self, topic: str, payload: bytes) -> None:
        """A channel's retained manifest: remember the latest version published (the hub
        does not verify it — terminals do; this is what was offered to them)."""
        from agent.policy.errors import PolicyError
        from agent.policy.manifest import Envelope

        if not payload or not topic.endswith("/manifest"):
            return
        try:
            m = Envelope.parse(bytes(payload)).manifest_model()
        except (PolicyError, ValueError) as err:
            log.debug("%s: not a manifest: %s", topic, err)
            return
        self._write(self.fleet.record_manifest, m.channel, m.version, m.expires, self.clock())


def attach_probe(link: Link, fleet: FleetStore, *, key: PrivateKey | None,
                 terminal_key: Callable[[str], PublicKey | None],
                 period_s: float = 60.0) -> ClockProbe:
    """A :class:`ClockProbe` on ``link``, subscribed to every terminal's ``cmd/result``
    and every channel's manifest (neither shared: each hub instance measures on its own)."""
    probe = ClockProbe(link, fleet, key=key, terminal_key=terminal_key, period_s=period_s)
    link.subscribe(TerminalTopics.all_of("cmd/result"), probe.on_result, qos=1)
    # channels have several levels (city/370302/bus): every policy topic, manifests kept
    link.subscribe(TopicFilter(f"{PREFIX}/policy/#"), probe.on_manifest, qos=1)
    return probe
