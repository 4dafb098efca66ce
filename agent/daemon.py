"""The terminal daemon: drivers → decide → journal → actuators → uplink.

Components start in an explicit order and stop in reverse (:data:`Terminal.START_ORDER`).
Hardware threads only put presentations on a queue; one worker thread decides them in
arrival order, so decisions, counters and the journal's sequence never race. Actuators
run after the journal commit; an actuator that raises is logged and the next still runs.
The uplink is notified after each record and never sits on the decision path.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.clock import clock_quality
from agent.config import AgentConfig
from agent.control import ControlServer, control_server, health, heartbeat
from agent.datalock import DataDirLock
from agent.diskguard import DiskGuard
from agent.engine import Engine, Outcome
from agent.gcquiet import QuietCollector
from agent.hardware_events import journal_hardware_event
from agent.journal import Journal
from agent.kiosk import ServiceChoice
from agent.model import ClockQuality, Presentation
from agent.pseudonym import Pseudonymizer
from agent.rules import RuleSet, load_ruleset
from agent.sdnotify import notify, supervise
from agent.store import PolicyStore
from agent.tap_timing import TapTimer
from agent.timebase import TimeBase
from drivers.base import Actuator, PresentationSource
from drivers.registry import load_actuator, load_source, options_for, resolve_auto_cards
from profiles import profile_path

if TYPE_CHECKING:
    from drivers.gate import Gate
    from drivers.gpio import GpioBoard

__all__ = ["Terminal"]

log = logging.getLogger(__name__)

REPLAY_LOOKBACK_S = 3600.0
"""How far back a restart reads the journal for accepted codes (s): beyond every code
window (at most the back window plus the widest clock allowance, ~11 min)."""

OutcomeListener = Callable[[Outcome], None]


class Terminal:
    """One running terminal. Build from config; :meth:`start`, then :meth:`stop` (safe twice).

    ``sources``/``actuators`` override the ones the config names (tests, the demo).
    Raises ``ConfigFileError``/``RuleSetError`` before anything starts if the profile is
    invalid: the daemon never runs with half a config.
    """

    START_ORDER = ("lock", "journal", "store", "engine", "disk", "actuators", "gpio", "keypad",
                   "uplink", "policy", "worker", "sources")

    def __init__(self, cfg: AgentConfig, *, sources: list[PresentationSource] | None = None,
                 actuators: list[Actuator] | None = None, clock: Callable[[], float] = time.time,
                 ruleset: RuleSet | None = None,
                 clock_quality: Callable[[], ClockQuality] = clock_quality,
                 mono: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        # a test that injects one fake wall clock gets it as the monotonic clock as well
        self.mono = mono or (time.monotonic if clock is time.time else clock)
        self.timebase: TimeBase | None = None
        self.disk: DiskGuard | None = None
        self.control: ControlServer | None = None
        self.disk_check_s = 5.0       # how often a full disk is checked for space (s)
        self.clock_quality = clock_quality
        self.ruleset = ruleset or load_ruleset(profile_path(cfg.terminal.profile))
        self.pseudonymizer = Pseudonymizer(cfg.pseudonym_key())
        self._sources_override = sources
        self._actuators_override = actuators
        self.sources: list[PresentationSource] = []
        self.actuators: list[Actuator] = []
        self.journal: Journal | None = None
        self.store: PolicyStore | None = None
        self.engine: Engine | None = None
        self.uplink: Any = None
        self.downlink: Any = None           # sync.downlink.Downlink
        self.applier: Any = None            # agent.policy.apply.PolicyApplier
        self.commands: Any = None           # agent.commands.CommandResponder
        self.gates: list[Gate] = []
        self.gpio: GpioBoard | None = None
        self.services = ServiceChoice()     # the kiosk's service keys (agent.kiosk)
        self._recent: OrderedDict[int, Outcome] = OrderedDict()  # accepted at a gate, for undo
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1000)
        self._worker: threading.Thread | None = None
        self._listeners: list[OutcomeListener] = []
        self._started: list[str] = []
        self._stopped = threading.Event()
        self._lock = DataDirLock(cfg.terminal.data_dir)
        self.worker_beat = time.monotonic()    # the decision worker's last sign of life
        self.taps = TapTimer(self.ruleset.profile.tap_budget_ms)   # slow taps (status)
        self.gc = QuietCollector()          # Python's full collections between taps

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start every component in :data:`START_ORDER`; on failure stop what started."""
        try:
            for name in self.START_ORDER:
                getattr(self, f"_start_{name}")()
                self._started.append(name)
                log.debug("started %s", name)
        except BaseException:
            self.stop()
            raise
        notify("READY=1", f"STATUS=deciding as {self.cfg.terminal.id}")
        log.info("terminal %s started (profile %s, policy %s)", self.cfg.terminal.id,
                 self.ruleset.profile.name, self.store.info.label if self.store else "?")

    def stop(self) -> None:
        """Stop components in reverse start order (those without a ``_stop_`` method have
        nothing to release). Safe to call twice."""
        if self._started:
            notify("STOPPING=1")
        while self._started:
            name = self._started.pop()
            stop = getattr(self, f"_stop_{name}", None)   # the engine holds nothing to stop
            if stop is None:
                continue
            try:
                stop()
            except Exception:
                log.exception("stopping %s failed", name)
        self._stopped.set()

    def run_forever(self) -> int:
        """Start, then block until SIGTERM/SIGINT; stop cleanly. Returns the exit status:
        0 after a signal, 1 when the journal is no longer this daemon's to write (so
        systemd restarts it and the restart re-reads the journal).

        The systemd watchdog is pinged only while :meth:`health` finds nothing wrong,
        never from a bare timer (:func:`~agent.sdnotify.supervise`).
        """
        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self._stopped.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self._stopped.clear()
        self.start()
        self._stopped.clear()
        status = supervise(self._stopped, self.health, f"deciding as {self.cfg.terminal.id}")
        self.stop()
        return status

    @property
    def worker_running(self) -> bool:
        return self._worker is not None

    def health(self) -> str | None:
        """None when the terminal can decide, else the problem (:func:`control.health`)."""
        return health(self)

    # -- public --------------------------------------------------------------------------
    def submit(self, p: Presentation) -> None:
        """Queue a presentation for decision (called from driver threads)."""
        self._tap_begins()
        try:
            self._queue.put(self.services.apply(p), timeout=1.0)
        except queue.Full:
            self._tap_ends()
            log.error("presentation queue full: dropping a %s from %s", p.kind, p.source)
        except BaseException:
            self._tap_ends()
            raise

    def _tap_begins(self) -> None:
        """A presentation is in flight: children yield, no checkpoint or full GC starts."""
        self.gc.tap_started()
        if self.applier is not None:
            self.applier.schedule.activity()
        if self.journal is not None and self.journal.checkpointer is not None:
            self.journal.checkpointer.tap_started()

    def _tap_ends(self) -> None:
        """The presentation is journaled (or dropped, or its decision failed): exactly once
        per :meth:`_tap_begins`, or a delta child would be held after every later tap."""
        self.gc.tap_done()
        if self.applier is not None:
            self.applier.schedule.tap_done()
        if self.journal is not None and self.journal.checkpointer is not None:
            self.journal.checkpointer.tap_done()

    def add_listener(self, fn: OutcomeListener) -> None:
        """Call ``fn(outcome)`` after each decision is journaled and acted on."""
        self._listeners.append(fn)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued presentation has been decided."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return self._queue.unfinished_tasks == 0

    def status(self) -> dict[str, Any]:
        """Heartbeat fields: profile, policy, clock, journal, alarms (``control.heartbeat``)."""
        return heartbeat(self)

    # -- components ------------------------------------------------------------------------
    def _start_lock(self) -> None:
        self._lock.acquire()     # DataDirBusy naming the PID of the daemon already running

    def _stop_lock(self) -> None:
        self._lock.release()

    def decision_time(self) -> float:
        """The time decisions, the journal and pruning go by (:class:`TimeBase`)."""
        return self.timebase.now() if self.timebase is not None else self.clock()

    def _start_journal(self) -> None:
        self.journal = Journal(self.cfg.journal_path, self.cfg.terminal.id,
                               clock=self.decision_time, background_checkpoint=True)
        self.timebase = TimeBase(wall=self.clock, mono=self.mono, quality=self.clock_quality,
                                 floor=self.journal.last_time, anchors=self.journal)
        self.disk = DiskGuard(self.cfg.journal_path.parent, self.journal,
                              reserve_bytes=int(self.cfg.journal.reserve_mb * 2**20),
                              resume=lambda: self.engine.resume() if self.engine else None,
                              check_s=self.disk_check_s)

    def _stop_journal(self) -> None:
        if self.journal:
            self.journal.close()

    def _start_store(self) -> None:
        self.store = PolicyStore(self.cfg.store_path)
        self.store.collect_garbage()        # generations left by an interrupted apply

    def _stop_store(self) -> None:
        if self.store:
            self.store.close()

    def _start_engine(self) -> None:
        assert self.journal and self.store
        self.engine = Engine(self.ruleset, self.store, self.journal,
                             location=self.cfg.location.build(), clock=self.clock,
                             verifier=self._make_verifier(), clock_quality=self.clock_quality,
                             gate_ok=lambda: all(g.available for g in self.gates),
                             timebase=self.timebase,
                             disk_full=self.disk.on_full if self.disk else None)

    def _start_disk(self) -> None:
        assert self.disk is not None
        self.disk.start()     # the reserve; a full disk at start is an alarm, not an error

    def _stop_disk(self) -> None:
        if self.disk is not None:
            self.disk.stop()

    def _make_verifier(self) -> Any:
        if not self.cfg.codes.enabled:
            return None
        from agent.codes import build_verifier  # imported only when codes are configured

        verifier = build_verifier(self.cfg.codes, self.pseudonymizer, clock=self.decision_time)
        assert self.journal is not None         # codes seen before a restart stay seen
        now = self.decision_time()
        verifier.remember(self.journal.bodies_since(now - REPLAY_LOOKBACK_S), now)
        return verifier

    def _start_actuators(self) -> None:
        if self._actuators_override is not None:
            self.actuators = list(self._actuators_override)
        elif self.cfg.prompt.enabled:
            self.actuators.append(load_actuator("prompt", self.cfg.prompt.backend)
                                  .from_options(self.cfg.prompt.options))
        from drivers.gate import Gate, GateActuator

        if self.cfg.gate.enabled:
            self.actuators.append(GateActuator.from_backend(self.cfg.gate.backend,
                                                            self.cfg.gate.options))
        for a in self.actuators:
            if isinstance(a, Gate):
                self.gates.append(a)
                a.subscribe(self._queue.put)

    def _stop_actuators(self) -> None:
        for a in reversed(self.actuators):
            try:
                a.close()
            except Exception:
                log.exception("closing %s failed", a.name)

    def _start_gpio(self) -> None:
        if not self.cfg.gpio.enabled:
            return
        from drivers.gpio import GpioBoard

        self.gpio = GpioBoard.from_options(self.cfg.gpio.backend, self.cfg.gpio.options)
        self.gpio.subscribe(self._queue.put)

    def _stop_gpio(self) -> None:
        if self.gpio is not None:
            self.gpio.close()

    def _start_keypad(self) -> None:
        from drivers.registry import load_keypad
        self.services.start(self.cfg.keypad, load_keypad)

    def _stop_keypad(self) -> None:
        self.services.close()

    def _start_policy(self) -> None:
        from agent.daemon_policy import start_policy
        start_policy(self)     # applier, its listeners and the downlink (docs/policy.md)

    def _stop_policy(self) -> None:
        if self.downlink is not None:
            self.downlink.stop()
        if self.applier is not None:
            self.applier.close()

    def _start_uplink(self) -> None:
        if not self.cfg.mqtt.enabled:
            return
        from sync.uplink import Uplink

        assert self.journal
        settings = self.cfg.mqtt.link_settings().with_identity(self.cfg.identity.dir)
        identity = None
        if self.cfg.identity.dir is not None:  # signed protocol v2; without: legacy v1
            from sync.acks import UplinkIdentity
            identity = UplinkIdentity.load(self.cfg.identity.dir)
        self.uplink = Uplink(self.journal, settings, self.cfg.terminal.id, status=self.status,
                             retention_s=self.cfg.journal.retention_days * 86400,
                             identity=identity)
        from sync.commands import attach, terminal_responder
        self.commands = terminal_responder(self)    # hub commands: cmd → cmd/result
        attach(self.uplink.link, self.cfg.terminal.id, self.commands)
        self.uplink.start()

    def _stop_uplink(self) -> None:
        if self.uplink is not None:
            self.uplink.stop()

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._work, name="decide", daemon=True)
        self._worker.start()
        self.control = control_server(self)      # `ykt status` for the technician
        self.control.start()
        self.gc.start()                          # start-up is done: freeze what it made

    def _stop_worker(self) -> None:
        self.gc.close()
        if self.control is not None:
            self.control.stop()
        self._queue.put(None)
        if self._worker:
            self._worker.join(10)

    def card_backend(self) -> str:
        """The configured card backend, ``auto`` resolved (:func:`resolve_auto_cards`)."""
        backend = self.cfg.cards.backend
        return resolve_auto_cards(demo=self.cfg.terminal.demo) if backend == "auto" else backend

    def _start_sources(self) -> None:
        if self._sources_override is not None:
            self.sources = list(self._sources_override)
        else:
            if self.cfg.cards.enabled:
                backend = self.card_backend()      # "auto" resolved: its options are defaults
                self.sources.append(load_source("cards", backend).from_options(
                    options_for("cards", backend, self.cfg.cards.options),
                    pseudonymizer=self.pseudonymizer))
            if self.cfg.codes.enabled:
                self.sources.append(load_source("codes", self.cfg.codes.backend).from_options(
                    self.cfg.codes.options, pseudonymizer=self.pseudonymizer))
        for s in self.sources:
            s.start(self.submit)

    def _stop_sources(self) -> None:
        for s in reversed(self.sources):
            s.stop()

    # -- the decision loop ---------------------------------------------------------------
    def _work(self) -> None:
        while True:
            self.worker_beat = time.monotonic()
            try:
                p = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                if p is None:
                    return
                if isinstance(p, Presentation):
                    self._decide(p)
                else:
                    self._hardware_event(p)
            except Exception:
                log.exception("worker failed on %s", type(p).__name__)
            finally:
                self._queue.task_done()

    def _hardware_event(self, ev: Any) -> None:
        """Journal what a gate or a GPIO input reported (:mod:`agent.hardware_events`)."""
        assert self.engine is not None
        record = journal_hardware_event(self.engine, self.gates, self._recent, ev)
        if record is not None:
            log.info("journaled event seq=%d %s", record.seq, record.body.get("event"))
            if self.uplink is not None:
                self.uplink.notify()

    def _decide(self, p: Presentation) -> None:
        try:
            assert self.engine is not None
            outcome = self.engine.handle(p)   # journaled durably before anything acts
        finally:
            self._tap_ends()                  # the children and the checkpoint may go on
        took_ms = self.taps.took_ms(p)
        d = outcome.decision
        log.debug("decided seq=%s %s reason=%s product=%s amount=%d rule=%s",
                  outcome.record.seq if outcome.record else "-",
                  "accept" if d.accepted else "deny", d.reason.value, d.product or "-",
                  d.amount_cents, d.rule_id)
        for a in self.actuators:
            try:
                if outcome.actionable:
                    a.act(outcome.decision, outcome.record)
                else:            # nothing journaled: "设备故障 请稍后", nothing opens
                    a.failsafe(d.prompt)
            except Exception:
                log.exception("actuator %s failed", a.name)
        if outcome.record is not None and d.accepted and self.gates:
            self._recent[outcome.record.seq] = outcome
            while len(self._recent) > 1000:
                self._recent.popitem(last=False)
        self.taps.observe(self.engine, outcome, took_ms)    # over budget: slow_tap, counted
        if self.uplink is not None and outcome.record is not None:
            self.uplink.notify()
        for fn in self._listeners:
            try:
                fn(outcome)
            except Exception:
                log.exception("outcome listener failed")
