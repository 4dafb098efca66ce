"""The terminal's uplink and the hub, end to end over mutual TLS on the broker that
``ykt hub broker-config`` writes: each with its own certificate, inside its own ACLs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from agent.journal import Journal
from agent.mqtt_settings import AGENT_MAX_PACKET, MqttSettings
from sync.hub.service import Hub
from sync.hub.store import SqliteHubStore
from sync.uplink import Uplink, UplinkSettings
from tests.fixtures.tls_broker import TlsBroker
from tests.test_hub import fill


def test_a_terminal_syncs_with_the_hub_over_mutual_tls(tls_broker: TlsBroker,
                                                       tmp_path: Path) -> None:
    tb = tls_broker
    ident = tb.root / "A"
    shutil.copyfile(tb.ca.paths.ca_cert, ident / "ca.crt")
    terminal = MqttSettings(port=tb.broker.port, reconnect_min_s=0.05, reconnect_max_s=0.5,
                            max_packet_size=AGENT_MAX_PACKET).with_identity(ident)
    hub_settings = tb.settings("hub").model_copy(update={"reconnect_min_s": 0.05,
                                                         "reconnect_max_s": 0.5})
    store = SqliteHubStore(tmp_path / "hub.db")
    hub = Hub(store, hub_settings, client_id="hub-1")
    hub.start()
    journal = Journal(tmp_path / "j.db", "A")
    fill(journal, 700)
    up = Uplink(journal, terminal, "A", lambda: {}, options=UplinkSettings.model_validate(
        {"batch_records": 100, "ack_timeout_s": 2.0}))
    try:
        assert hub.wait_ready(10), "the hub did not connect and subscribe over TLS"
        up.start()
        assert up.wait_synced(20), f"acked {journal.acked_seq}/{journal.last_seq}"
        assert up.link.server_max_packet is not None
    finally:
        up.stop()
        hub.stop()
    seqs = sorted(int(json.loads(x)["seq"]) for x in store.export())
    store.close()
    assert seqs == list(range(1, 701))
    assert hub.link.callback_errors == 0 and up.link.callback_errors == 0
