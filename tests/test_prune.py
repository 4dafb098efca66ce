"""Pruning the terminal's journal (``docs/protocol.md`` §5): a record goes only when the
hub has acknowledged it **and** it is older than the retention. Real journal, real broker,
``ykt hub run`` as a process; the wall clock is injected so that days pass at once.

Each prune here is :meth:`sync.uplink.Uplink.prune`, the step the uplink's thread runs
every ``prune_interval_s`` (that it runs on its own is shown in ``tests/test_uplink.py``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from agent.config import load_config
from agent.daemon import Terminal
from agent.journal import Journal
from drivers.sim_cards import SimCardSource
from simulator.broker import Mosquitto
from sync.uplink import Uplink, UplinkSettings
from tests.fixtures.hub import HubProcess, Listener, fast_settings, wait_until
from tests.test_hub import fill

DAY = 86400.0


class Clock:
    """A wall clock (epoch s) that moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _seqs(journal: Journal) -> list[int]:
    return [r.seq for r in journal.records(0, 10_000)]


def test_the_daemon_keeps_acked_records_for_its_retention_days(
        broker: Mosquitto, hub_process: HubProcess, tmp_path: Path) -> None:
    """``[journal] retention_days = 2`` in the terminal's config: acknowledged records stay
    for two days and go just after (the newest stays)."""
    conf = tmp_path / "terminal.toml"
    conf.write_text(
        '[terminal]\nid = "BUS-P1"\n'
        f'data_dir = "{tmp_path / "data"}"\ndemo = true\n'
        '[cards]\nbackend = "sim"\noptions = { population_size = 10 }\n'
        "[journal]\nretention_days = 2\n"
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nreconnect_max_s = 1\n')
    cfg = load_config(conf)
    clock = Clock(time.time())
    t0 = clock.now
    hub_process.start()
    terminal = Terminal(cfg, clock=clock)
    cards = SimCardSource(terminal.pseudonymizer, population_size=10)
    terminal._sources_override = [cards]
    terminal.start()
    try:
        for holder in cards.population.holders[:3]:
            cards.tap(holder)
        assert terminal.drain(10)
        journal, uplink = terminal.journal, terminal.uplink
        assert journal is not None and journal.last_seq == 3
        assert uplink.wait_synced(20), f"acked {journal.acked_seq} of 3"

        clock.now = t0 + 2 * DAY - 1
        assert uplink.prune() == 0
        assert _seqs(journal) == [1, 2, 3]
        clock.now = t0 + 2 * DAY + 1
        assert uplink.prune() == 2
        assert _seqs(journal) == [3]  # the newest record is kept to continue the chain
    finally:
        terminal.stop()


def test_a_partial_ack_prunes_up_to_the_ack_after_the_retention_and_never_beyond(
        broker: Mosquitto, hub_process: HubProcess, listener: Listener,
        tmp_path: Path) -> None:
    """The hub acks only up to 5 (record 6 reached it damaged, so its contiguous run ends
    at 5 though it holds 7–10): records 1–5 are pruned once older than the retention,
    6–10 never, however old."""
    clock = Clock(time.time())
    t0 = clock.now
    journal = Journal(tmp_path / "j.db", "bus-1", clock=clock)
    fill(journal, 10)
    with sqlite3.connect(journal.path) as db:  # record 6 as a disk error would leave it
        db.execute("UPDATE records SET hash = upper(hash) WHERE seq = 6")
    listener.subscribe("ykt/v1/t/bus-1/ack")
    hub_process.start()
    up = Uplink(journal, fast_settings(broker), "bus-1", options=UplinkSettings(
        retention_s=3600, ack_timeout_s=60))
    up.start()
    try:
        wait_until(lambda: journal.acked_seq == 5, 20, "the hub's ack of seq 5")
        gap = hub_process.report()["terminals"]["bus-1"]["gap"]
        assert gap == {"missing_from": 6, "missing_to": 6, "records_beyond": 4}
        assert {json.loads(a)["seq"] for a in listener.got("ykt/v1/t/bus-1/ack")} == {5}

        clock.now = t0 + 3599
        assert up.prune() == 0
        assert _seqs(journal) == list(range(1, 11))
        clock.now = t0 + 3601
        assert up.prune() == 5
        assert _seqs(journal) == [6, 7, 8, 9, 10]
        clock.now = t0 + 365 * DAY
        assert up.prune() == 0
        assert _seqs(journal) == [6, 7, 8, 9, 10]
        assert journal.acked_seq == 5
    finally:
        up.stop()
        journal.close()
