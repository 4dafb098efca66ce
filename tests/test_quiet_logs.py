"""An expected broker outage is news once: at most one WARNING when it starts and one INFO
when it ends per process (the terminal's uplink in this process, the hub process), however
long it lasts; paho-mqtt's own socket messages stay below WARNING."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from agent.journal import Journal
from simulator.broker import Mosquitto
from tests.fixtures.hub import HubProcess, wait_until
from tests.test_uplink import fill, make_uplink

LINE = re.compile(r"^\S+ \S+ (?:\[[^\]]*\] )?(?P<level>WARNING|ERROR|CRITICAL) ")


def test_a_broker_outage_logs_at_most_two_lines_per_process(
        broker: Mosquitto, hub_process: HubProcess, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    hub_process.start()
    journal = Journal(tmp_path / "j.db", "bus-1")
    up = make_uplink(journal, broker)
    up.start()
    try:
        fill(journal, 20)
        up.notify()
        assert up.wait_synced(20)
        hub_log = hub_process.workdir / f"hub-{hub_process.runs}.log"
        hub_before = hub_log.read_text(errors="replace").count("\n")
        caplog.clear()
        caplog.set_level(logging.INFO)
        broker.stop(kill=True)
        reconnects = up.link.connects
        fill(journal, 50)                       # taps go on, offline
        up.notify()
        # the outage lasts several reconnect attempts of both clients
        wait_until(lambda: up.link.connect_failures >= 5, 30, "five failed reconnects")
        broker.start()
        wait_until(lambda: up.link.connects > reconnects, 30, "the reconnect")
        assert up.wait_synced(30)
        mine = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(mine) <= 1, [r.getMessage() for r in mine]
        back = [r for r in caplog.records if r.levelno == logging.INFO
                and r.name == "sync.link" and "connected to" in r.getMessage()]
        assert len(back) == 1
        hub_lines = hub_log.read_text(errors="replace").splitlines()[hub_before:]
        loud = [line for line in hub_lines if LINE.match(line)]
        assert len(loud) <= 2, loud
    finally:
        up.stop()
