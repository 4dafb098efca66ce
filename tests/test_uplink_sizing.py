"""The uplink sizes its batches in bytes from the broker's CONNACK: against a broker that
allows 16 KiB packets, 500-record batches are split, every record reaches the hub once,
and the broker never has to disconnect the terminal (no reconnect-and-resend loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.journal import Journal
from simulator.broker import Mosquitto
from sync.acks import encode_batch, fit_batch
from tests.fixtures.hub import HubProcess
from tests.test_uplink import assert_exactly_once, fill, make_uplink

LIMIT = 16 * 1024


@pytest.fixture
def small_broker(tmp_path: Path) -> Mosquitto:
    b = Mosquitto(workdir=tmp_path / "mosquitto", persistence=False)
    with open(b.conf, "a") as f:
        f.write(f"max_packet_size {LIMIT}\n")
    b.start()
    yield b
    b.close()


def test_batches_fit_the_broker_s_limit(small_broker: Mosquitto, tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.db", small_broker, tmp_path)
    hub.start()
    journal = Journal(tmp_path / "j.db", "bus-small")
    fill(journal, 1500)
    up = make_uplink(journal, small_broker, batch_records=500)
    up.start()
    try:
        assert up.wait_synced(60), f"acked {journal.acked_seq}/{journal.last_seq}"
        assert up.link.server_max_packet == LIMIT
        assert up.link.connects == 1, "the broker disconnected the terminal"
        assert up.stats["batches_sent"] > 1500 // 500       # 500-record batches were split
    finally:
        up.stop()
        hub.stop()
    assert_exactly_once(hub.export(), journal)


def test_fit_batch_halves_until_it_fits() -> None:
    rows = [(i, '{"x":"' + "a" * 100 + '"}', "0" * 64) for i in range(1, 101)]
    kept, payload = fit_batch(rows, lambda r: encode_batch("t", r), 2000)
    assert len(payload) <= 2000 and kept == rows[:len(kept)] and 1 <= len(kept) < 100
    assert fit_batch(rows, lambda r: encode_batch("t", r), None)[0] == rows
    with pytest.raises(ValueError, match="alone"):
        fit_batch(rows, lambda r: encode_batch("t", r), 50)
