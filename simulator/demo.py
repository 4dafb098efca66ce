"""The end-to-end demo: a broker, a hub process and a terminal deciding taps live.

A simulated morning on a bus (or at a scenic gate, a museum gate, a service-hall kiosk): a population of card holders taps (elderly, disabled, 优抚,
students, standard fares, a lost card, an expired card, a double tap, a card pulled away
mid-read); a third of the way through, the broker goes down; taps go on offline; the
broker comes back; the backlog drains. The summary counts what the terminal decided,
what reached the hub, and what was lost or duplicated (both must be zero).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.cli.agent import journal_stats
from agent.config import DEMO_PSEUDONYM_KEY, AgentConfig
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.pseudonym import Pseudonymizer
from agent.store import PolicyInfo, PolicyStore
from drivers.base import PresentationSource
from drivers.gate.sim import sim_controller
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource
from simulator.broker import Mosquitto
from simulator.population import Population
from simulator.process import stop_process

__all__ = ["DemoSummary", "run_demo", "seed_store"]

log = logging.getLogger(__name__)


@dataclass
class DemoSummary:
    """What happened in a demo run. ``lost`` and ``duplicated`` must be 0, ``undecided``
    (the tap numbers, from 0, that produced no decision) empty; ``policy`` is the policy
    label the records carry."""

    terminal: str
    taps: int = 0
    decided: int = 0
    journaled: int = 0
    accepted: int = 0
    denied: int = 0
    not_journaled: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_product: dict[str, int] = field(default_factory=dict)
    fares_cents: int = 0
    taps_during_outage: int = 0
    profile: str = "bus_validator"
    events: dict[str, int] = field(default_factory=dict)
    records_at_hub: int = 0
    lost: int = 0
    duplicated: int = 0
    chain_verifies: bool = False
    synced_in_s: float = 0.0
    decision_ms_p50: float = 0.0
    decision_ms_p99: float = 0.0
    undecided: list[int] = field(default_factory=list)
    policy: str = ""
    workdir: str = ""

    @property
    def ok(self) -> bool:
        """Every tap decided, nothing lost or duplicated on the way to the hub, chain intact."""
        return not self.undecided and not self.lost and not self.duplicated \
            and self.chain_verifies


def seed_store(store: PolicyStore, population: Population, pseudo: Pseudonymizer,
               *, tickets: dict[str, str] | None = None,
               channel: str = "demo/370302/bus") -> None:
    """Load the population's entitlements and hotlist, as the hub's policy bundle would
    (version 1 of ``channel``: the label journaled with each decision is ``channel@1``).

    ``tickets`` maps a ticket entitlement name to a day (ISO date): every second holder
    without a concession gets that pre-booked ticket (scenic gates).
    """
    ents = [{"holder_key": pseudo.holder_key(h.ssn), "name": c, "valid_from": "",
             "valid_until": ""} for h in population for c in h.categories]
    for name, day in (tickets or {}).items():
        ents += [{"holder_key": pseudo.holder_key(h.ssn), "name": name, "valid_from": day,
                  "valid_until": day}
                 for i, h in enumerate(population) if not h.categories and i % 2 == 0]
    hot = [{"key": pseudo.card_key(h.card_id), "kind": "card", "reason": "lost",
            "listed": ""} for h in population if h.hotlisted]
    store.apply(entitlements=ents, hotlist=hot, replace=True,
                info=PolicyInfo(channel, 1, "embedded", ""))


def _script(pop: Population, taps: int, rnd: random.Random) -> list[str | int]:
    """Tap order: indices into the population, plus "pull" for a card pulled mid-read."""
    special = {h: i for i, h in enumerate(pop.holders)}
    order: list[str | int] = [rnd.randrange(len(pop)) for _ in range(taps)]
    if taps >= 10:
        order[3] = special[pop.tagged("hotlisted")[0]]
        order[6] = special[pop.tagged("expired")[0]]
        order[8] = order[7]                       # a double tap
        order[9] = "pull"                         # pulled away mid-read
    return order


class _Hub:
    """The hub as a real second process (``ykt hub run``)."""

    def __init__(self, db: Path, port: int, workdir: Path,
                 env: dict[str, str] | None = None, identity: Path | None = None) -> None:
        self.db = db
        self._log = open(workdir / "hub.log", "ab")  # noqa: SIM115 - closed in stop()
        signed = ["--identity", str(identity)] if identity is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "-v", "hub", "run", "--db", str(db),
             "--host", "127.0.0.1", "--port", str(port), "--reconnect-max", "1", *signed],
            stdout=self._log, stderr=self._log, env={**os.environ, **(env or {})})

    def export(self) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "agent.cli", "hub", "export", "--db",
                              str(self.db), "--format", "jsonl"],
                             capture_output=True, text=True, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc, grace_s=10)
        self._log.close()


_PROFILES: dict[str, dict[str, Any]] = {
    "bus_validator": {"id": "BUS-DEMO-0001", "start": "07:00", "gate": False,
                      "channel": "demo/370302/bus",
                      "location": {"route": "19路", "vehicle": "鲁B-D0001", "stop": "泉城广场"}},
    "scenic_gate": {"id": "GATE-DEMO-0001", "start": "09:00", "gate": True,
                    "channel": "demo/370902/scenic",
                    "location": {"site": "taishan", "gate": "E1", "direction": "in"}},
    "museum_gate": {"id": "MUSEUM-DEMO-0001", "start": "09:10", "gate": True,
                    "channel": "demo/370102/museum",
                    "location": {"site": "shandong-museum", "gate": "M1", "direction": "in"}},
    "service_kiosk": {"id": "KIOSK-DEMO-0001", "start": "09:00", "gate": False,
                      "channel": "demo/370102/kiosk",
                      "location": {"site": "jinan-hall-1"}},
}
PROFILES = tuple(_PROFILES)


def run_demo(taps: int = 200, *, profile: str = "bus_validator", seed: int = 7,
             outage: bool = True, cards_backend: str = "sim",
             workdir: str | Path | None = None, gap_s: float = 0.01,
             on_outcome: Callable[[Outcome, str], None] | None = None,
             on_event: Callable[[str], None] | None = None, tls: bool = False) -> DemoSummary:
    """Run the whole demo; returns its summary. ``gap_s`` is the real pause between taps.

    Simulated time: each tap advances a simulated clock by 5–40 s from the profile's
    opening time. ``cards_backend`` ``"vpcd"`` presents virtual cards through the real
    pcscd + vpcd + pyscard path (with the virtual PSAM) instead of the in-process ``sim``.
    ``tls``: mutual TLS on the broker ``ykt hub broker-config`` writes, the terminal
    enrolled over the hub's HTTPS endpoint (:mod:`simulator.trust`).
    Raises ``RuntimeError`` if the backlog does not reach the hub within 60 s.
    """
    if profile not in _PROFILES:
        raise ValueError(f"unknown demo profile {profile!r} (known: {', '.join(PROFILES)})")
    spec = _PROFILES[profile]
    rnd = random.Random(seed)
    work = Path(workdir or tempfile.mkdtemp(prefix="ykt-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    say = on_event or (lambda _msg: None)
    pop = Population.generate(60, seed=seed)
    tz = ZoneInfo("Asia/Shanghai")
    today = datetime.now(tz).date()
    hh, mm = (int(x) for x in spec["start"].split(":"))
    sim_now = [datetime(today.year, today.month, today.day, hh, mm, tzinfo=tz).timestamp()]
    secure = None
    if tls:
        from simulator.trust import secure_demo

        secure = secure_demo(work, spec["id"], [])
        broker = secure.broker
    else:
        broker = Mosquitto(workdir=work / "broker")
        broker.start()
    # with TLS the terminal is enrolled: it signs its batches (protocol v2), so the hub
    # verifies them with its identity and signs its acks
    hub = _Hub(work / "hub.db", broker.port, work, secure.hub_env if secure else None,
               secure.hub_identity if secure else None)
    cfg_dict: dict[str, Any] = {
        "terminal": {"id": spec["id"], "profile": profile, "data_dir": str(work / "terminal"),
                     "demo": True},
        "location": spec["location"],
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0},
    }
    if secure is not None:
        cfg_dict["identity"] = {"dir": str(secure.terminal_identity)}
    if spec["gate"]:
        cfg_dict["gate"] = {"enabled": True, "backend": "sim",
                            "options": {"direction": "in", "open_ms": 700}}
    cfg = AgentConfig.model_validate(cfg_dict)
    pseudo = Pseudonymizer(DEMO_PSEUDONYM_KEY)
    cards = SimCardSource(pseudo, population=pop)
    source: PresentationSource = cards
    rig: Any = None
    if cards_backend == "vpcd":
        from drivers.pcsc import PcscCardSource
        from simulator.pcscd import start_virtual_reader

        rig = start_virtual_reader(workdir=work / "pcscd")
        source = PcscCardSource(pseudo, reader=rig.card_reader, psam="pcsc",
                                psam_reader=rig.psam_reader)
    elif cards_backend != "sim":
        raise ValueError(f"unknown demo card backend {cards_backend!r} (sim or vpcd)")
    prompter = SimPrompter()
    terminal = Terminal(cfg, sources=[source], actuators=[prompter], clock=lambda: sim_now[0])
    summary = DemoSummary(terminal=cfg.terminal.id, workdir=str(work), profile=profile)
    outcomes: list[Outcome] = []
    reasons: Counter[str] = Counter()
    products: Counter[str] = Counter()
    latencies: list[float] = []
    offline = [False]

    def collect(o: Outcome) -> None:
        outcomes.append(o)
        if o.presentation is not None:
            latencies.append((time.monotonic_ns() - o.presentation.seen_ns) / 1e6)
        summary.decided += 1
        reasons[o.decision.reason.value] += 1
        if o.record is None:
            summary.not_journaled += 1
        else:
            summary.journaled += 1
            if offline[0]:
                summary.taps_during_outage += 1
        if o.decision.accepted:
            summary.accepted += 1
            products[o.decision.product] += 1
            summary.fares_cents += o.decision.amount_cents
        else:
            summary.denied += 1
        if on_outcome is not None:
            who = (f"{o.credential.masked_name} {o.credential.masked_id}"
                   if o.credential else "")
            on_outcome(o, who)

    terminal.add_listener(collect)
    try:
        store = PolicyStore(cfg.store_path)
        seed_store(store, pop, pseudo, tickets={"ticket:taishan": today.isoformat()},
                   channel=spec["channel"])
        store.close()
        terminal.start()
        where = ", ".join(f"{k} {v}" for k, v in spec["location"].items())
        say(f"{profile} {cfg.terminal.id} ({where}) deciding; broker 127.0.0.1:{broker.port};"
            f" hub pid {hub.proc.pid}")
        controller = sim_controller(terminal.gates[0]) if terminal.gates else None
        services = "AABAC"
        for i, step in enumerate(_script(pop, taps, rnd)):
            if outage and i == taps // 3:
                broker.stop(kill=True)
                offline[0] = True
                say("broker DOWN: taps go on offline, journaled locally")
            if outage and i == (2 * taps) // 3:
                broker.start()
                offline[0] = False
                say("broker back UP: the backlog drains to the hub")
            sim_now[0] += rnd.uniform(5, 40)
            if controller is not None and i == taps - 3:
                say("FIRE ALARM at the gate controller: all ways open, journaled")
                controller.fire_alarm(True)
                controller.wait_barrier("open_both", 3)
                controller.fire_alarm(False)
                controller.wait_barrier("closed", 3)
            before = len(outcomes)
            service = services[i % 5] if profile == "service_kiosk" else ""
            if rig is not None:     # a virtual card in the vpcd reader's field
                holder = pop.holders[int(step) if step != "pull" else 0]
                rig.present(holder, **({"pull_after": 3} if step == "pull" else {}))
                if not _wait(lambda n=before: len(outcomes) > n, 10):  # type: ignore[misc]
                    say(f"tap {i}: card in the field 10 s, NOT DECIDED")
                rig.pull()
            elif step == "pull":
                cards.pull_mid_read()
            else:
                cards.tap(pop.holders[int(step)], service=service)
            summary.taps += 1
            terminal.drain(5)
            if len(outcomes) == before:
                summary.undecided.append(i)
            if controller is not None and len(outcomes) > before \
                    and outcomes[before].decision.accepted:
                controller.wait_barrier("open_in", 3)
                if rnd.random() < 0.85:          # most visitors walk through
                    controller.pass_through("in")
                controller.wait_barrier("closed", 3)   # else the gate times out
            time.sleep(gap_s)
        t0 = time.monotonic()
        if terminal.uplink is not None and not terminal.uplink.wait_synced(60):
            raise RuntimeError("the backlog did not reach the hub within 60 s; see "
                               f"{work / 'hub.log'}")
        summary.synced_in_s = round(time.monotonic() - t0, 3)
        assert terminal.journal is not None
        time.sleep(0.2)    # let the last gate events be journaled
        terminal.drain(5)
        if terminal.uplink is not None:
            terminal.uplink.wait_synced(30)
        summary.chain_verifies = terminal.journal.verify() == []
        summary.events = journal_stats(terminal.journal, "event")
        last_seq = terminal.journal.last_seq
    finally:
        terminal.stop()
        hub.stop()
        (secure or broker).close()
        if rig is not None:
            rig.close()
    rows = [r for r in hub.export() if r.get("terminal") == cfg.terminal.id]
    summary.policy = next((str(r["body"]["policy"]) for r in rows
                           if r.get("body", {}).get("policy")), "")
    seqs = Counter(int(r["seq"]) for r in rows)
    summary.records_at_hub = len(seqs)
    summary.duplicated = sum(n - 1 for n in seqs.values())
    summary.lost = sum(1 for s in range(1, last_seq + 1) if s not in seqs)
    summary.by_reason = dict(reasons.most_common())
    summary.by_product = dict(products.most_common())
    if latencies:
        latencies.sort()
        summary.decision_ms_p50 = round(latencies[len(latencies) // 2], 3)
        summary.decision_ms_p99 = round(latencies[min(len(latencies) - 1,
                                                      int(len(latencies) * 0.99))], 3)
    return summary


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def summary_dict(s: DemoSummary) -> dict[str, Any]:
    """The summary as JSON-ready data, with ``ok`` (:attr:`DemoSummary.ok`)."""
    return {**asdict(s), "ok": s.ok}
