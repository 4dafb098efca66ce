"""Protocol v2 (``docs/protocol.md`` §10) on a real, open broker — the "compromised
broker" case: anyone may publish anything. A forged ack, a forged batch for another
terminal, a replayed old batch and a flood of fake "hub online" messages are refused by
signature; nothing is pruned, stored or resent because of them. The hub is ``ykt hub run
--identity`` as a process; "refused" is proven by counters, never by waiting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.journal import GENESIS, Journal, canonical, record_hash
from simulator.broker import Mosquitto
from sync.acks import UplinkIdentity, encode_batch_v2
from sync.signed import SignedAck, encode_ack, encode_hub_status
from sync.uplink import Uplink, UplinkSettings
from tests.fixtures.hub import HubProcess, Listener, fast_settings, wait_until
from tests.fixtures.trust import TrustDirs, make_trust
from tests.test_hub import fill
from tests.test_hub_process import chain


def forged_chain(terminal: str, n: int) -> list[tuple[int, str, str]]:
    """``n`` records of ``terminal`` that chain and hash correctly (product "forged")."""
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        body = {"v": 1, "terminal": terminal, "seq": seq, "prev": prev, "clock": "synced",
                "time": "2026-11-19T00:00:00.000Z",
                "decision": {"product": "forged", "reason": "accepted", "amount_cents": 0}}
        prev = record_hash(body)
        rows.append((seq, canonical(body).decode(), prev))
    return rows


@pytest.fixture
def trust(tmp_path: Path) -> TrustDirs:
    return make_trust(tmp_path)


def signed_uplink(journal: Journal, broker: Mosquitto, identity: Path,
                  **opts: float) -> Uplink:
    options = UplinkSettings.model_validate({"batch_records": 100, "ack_timeout_s": 2.0,
                                             **opts})
    return Uplink(journal, fast_settings(broker), journal.terminal, options=options,
                  identity=UplinkIdentity.load(identity))


def test_signed_sync_stores_head_signatures_and_ignores_forged_acks(
        broker: Mosquitto, trust: TrustDirs, tmp_path: Path, listener: Listener) -> None:
    ident = trust.enroll("bus-1", tmp_path)
    hub = HubProcess(tmp_path / "hub.db", broker, tmp_path, identity=trust.hub)
    hub.start()
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 250)
    up = signed_uplink(journal, broker, ident, retention_s=0)
    listener.subscribe("ykt/v1/t/bus-1/tx")
    up.start()
    try:
        assert up.wait_synced(20), f"not synced: acked {journal.acked_seq}"
        rows = hub.export()
        assert [r["seq"] for r in rows] == list(range(1, 251))
        assert {r["epoch"] for r in rows} == {journal.epoch}
        assert [r["seq"] for r in rows if "sig" in r] == [100, 200, 250]  # batch heads
        # the hub goes away; new records wait; an attacker acks them all
        hub.stop()
        fill(journal, 30)
        up.notify()
        wait_until(lambda: any(json.loads(p)["records"][-1]["seq"] == 280
                               for p in listener.got("ykt/v1/t/bus-1/tx")), 10,
                   "the batch with record 280 on the broker")
        sent = json.loads([p for p in listener.got("ykt/v1/t/bus-1/tx")
                           if json.loads(p)["records"][-1]["seq"] == 280][-1])
        head = sent["records"][-1]
        forged = encode_ack(ec.generate_private_key(ec.SECP256R1()), SignedAck(
            "bus-1", journal.epoch, 280, head["hash"], "ab" * 16, 280, head["hash"],
            sent["batch"]))
        listener.publish("ykt/v1/t/bus-1/ack", forged)
        listener.publish("ykt/v1/t/bus-1/ack", b'{"v":1,"seq":280}')
        listener.publish("ykt/v1/t/bus-1/ack", b"[" * 100_000)
        wait_until(lambda: up.stats.get("forged_acks", 0) == 1
                   and up.stats.get("malformed_acks", 0) == 2, 10, "the acks to be counted")
        assert journal.acked_seq == 250
        assert up.prune() == 0 or journal.first_seq <= 251  # nothing unacked is pruned
        assert journal.first_seq <= 251 and journal.hash_at(280) == head["hash"]
        assert up.status_payload()["uplink"]["forged_acks"] == 1
        # the hub comes back: the genuine ack moves the terminal, the forged one never did
        hub.start()
        assert up.wait_synced(20)
        assert journal.acked_seq == 280
    finally:
        up.stop()
        hub.stop()


def test_forged_unknown_revoked_and_replayed_batches_change_nothing(
        broker: Mosquitto, trust: TrustDirs, tmp_path: Path, listener: Listener) -> None:
    ident = trust.enroll("bus-1", tmp_path)
    trust.enroll("bus-2", tmp_path)
    trust.revoke("bus-2")
    hub = HubProcess(tmp_path / "hub.db", broker, tmp_path, identity=trust.hub)
    hub.start()
    attacker = ec.generate_private_key(ec.SECP256R1())
    # chain-valid forgeries of bus-1's future records, signed with the wrong key, before
    # bus-1 ever sends; an unknown terminal; a revoked one; an unsigned v1 batch
    journal = Journal(tmp_path / "j.db", "bus-1")
    forged_rows = forged_chain("bus-1", 5)
    listener.subscribe("ykt/v1/t/+/ack")
    listener.subscribe("ykt/v1/t/bus-1/tx")
    listener.publish("ykt/v1/t/bus-1/tx", encode_batch_v2("bus-1", journal.epoch,
                                                           forged_rows, attacker, "f1"))
    listener.publish("ykt/v1/t/bus-9/tx", encode_batch_v2("bus-9", "", chain("bus-9", 3),
                                                           attacker, "f2"))
    listener.publish("ykt/v1/t/bus-2/tx", encode_batch_v2("bus-2", "", chain("bus-2", 3),
                                                           attacker, "f3"))
    from sync.uplink import encode_batch
    listener.publish("ykt/v1/t/bus-1/tx", encode_batch("bus-1", chain("bus-1", 3)))
    fill(journal, 120)
    up = signed_uplink(journal, broker, ident)
    up.start()
    try:
        assert up.wait_synced(20)
        rep = hub.report()
        assert rep["totals"]["rejected"] == {"bad_signature": 1, "unknown_terminal": 1,
                                             "revoked_terminal": 1, "unsigned_batch": 1}
        assert sorted(rep["terminals"]) == ["bus-1"]  # no row for unauthenticated ids
        assert rep["totals"]["chain_breaks"] == 0 and rep["totals"]["records"] == 120
        assert not any("forged" in json.dumps(r) for r in hub.export())
        assert set(listener.received("/ack")) == {"ykt/v1/t/bus-1/ack"}
        acks_before = len(listener.got("ykt/v1/t/bus-1/ack"))
        # replay the terminal's first batch: a duplicate, no conflict, no regression
        first = next(p for p in listener.got("ykt/v1/t/bus-1/tx")
                     if json.loads(p).get("batch") not in ("f1", None)
                     and json.loads(p)["records"][0]["seq"] == 1)
        listener.publish("ykt/v1/t/bus-1/tx", first)
        wait_until(lambda: len(listener.got("ykt/v1/t/bus-1/ack")) > acks_before, 10,
                   "the hub's ack to the replay")
        rep = hub.report()
        term = rep["terminals"]["bus-1"]
        assert term["duplicates_rejected"] >= 100 and rep["totals"]["chain_breaks"] == 0
        assert rep["totals"]["records"] == 120 and term["contiguous_seq"] == 120
        assert journal.acked_seq == 120
    finally:
        up.stop()
        hub.stop()


def test_a_fake_hub_online_flood_causes_no_resend(broker: Mosquitto, trust: TrustDirs,
                                                  tmp_path: Path, listener: Listener) -> None:
    ident = trust.enroll("bus-1", tmp_path)
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 300)
    up = signed_uplink(journal, broker, ident, ack_timeout_s=3600, hub_online_resend_s=3600)
    up.start()
    try:
        wait_until(lambda: up.stats["batches_sent"] == 3, 10, "the first batches")
        fake = json.dumps({"v": 2, "state": "online", "instance": "evil", "since_ms": 1,
                           "sig": "AAAA"}).encode()
        wrong_key = encode_hub_status(ec.generate_private_key(ec.SECP256R1()), "evil",
                                      "online", 1)
        for i in range(100):
            listener.publish(f"ykt/v1/hub/evil{i % 3}/status", fake)
        listener.publish("ykt/v1/hub/evil/status", wrong_key)
        listener.publish("ykt/v1/hub/evil/status", b'{"v":1,"state":"online"}')
        wait_until(lambda: up.stats.get("forged_hub_status", 0) == 102, 10,
                   "the fake hub statuses to be counted")
        assert up.stats["hub_online_resends"] == 0 and up.stats["batches_sent"] == 3
        # a genuine one triggers one resend; more within the period are limited
        for _ in range(5):
            listener.publish("ykt/v1/hub/real/status",
                             encode_hub_status(trust.signing_key, "real", "online", 2))
        wait_until(lambda: up.stats["hub_online_limited"] == 4, 10, "the limited resends")
        assert up.stats["hub_online_resends"] == 1
        wait_until(lambda: up.stats["batches_sent"] == 6, 10, "one resend of the backlog")
        assert up.stats["batches_sent"] == 6
    finally:
        up.stop()


def test_hub_restored_from_a_backup_gets_every_record_again(
        broker: Mosquitto, trust: TrustDirs, tmp_path: Path) -> None:
    """Stop the hub, put back a backup taken seconds earlier, ``ykt hub reincarnate``,
    start it: the terminal resends what the hub lost; 0 lost, 0 duplicated, not stuck."""
    import sqlite3
    import subprocess
    import sys

    ident = trust.enroll("bus-1", tmp_path)
    db = tmp_path / "hub.db"
    hub = HubProcess(db, broker, tmp_path, identity=trust.hub)
    hub.start()
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 200)
    up = signed_uplink(journal, broker, ident)
    up.start()
    try:
        assert up.wait_synced(20)
        backup = tmp_path / "backup.db"
        with sqlite3.connect(db) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        fill(journal, 300)
        up.notify()
        assert up.wait_synced(20) and journal.acked_seq == 500
        old_store = up.status_payload()["hub_store"]
        hub.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        backup.rename(db)
        out = subprocess.run([sys.executable, "-m", "agent.cli", "hub", "reincarnate",
                              "--db", str(db)], capture_output=True, text=True, check=True)
        assert old_store in out.stdout
        hub.start()
        fill(journal, 10)
        up.notify()
        wait_until(lambda: journal.acked_seq == 510, 30, "every record acked by the restored hub")
        rows = hub.export()
        assert [r["seq"] for r in rows] == list(range(1, 511))  # 0 lost, 0 duplicated
        assert up.stats["resyncs"] == 1 and up.status_payload()["hub_store"] != old_store
        assert "records_lost_at_hub" not in up.status_payload()
        assert hub.report()["totals"]["chain_breaks"] == 0
    finally:
        up.stop()
        hub.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_replaced_data_directory_is_a_new_incarnation(
        broker: Mosquitto, trust: TrustDirs, tmp_path: Path, backend: str,
        request: pytest.FixtureRequest) -> None:
    """Same terminal id, new journal (new SD card): both incarnations' records are at the
    hub, each chain verifies, the report tells them apart; the old card syncing later
    still delivers its records. On SQLite and on PostgreSQL."""
    ident = trust.enroll("bus-1", tmp_path)
    db: Path | str = (tmp_path / "hub.db" if backend == "sqlite"
                      else request.getfixturevalue("pg_dsn"))
    hub = HubProcess(db, broker, tmp_path, identity=trust.hub)
    hub.start()
    old = Journal(tmp_path / "old" / "j.db", "bus-1")
    fill(old, 150)
    up = signed_uplink(old, broker, ident)
    up.start()
    assert up.wait_synced(20)
    fill(old, 20)  # written after the last sync: only on the old card
    up.stop()
    new = Journal(tmp_path / "new" / "j.db", "bus-1")
    assert new.epoch != old.epoch
    fill(new, 40)
    up2 = signed_uplink(new, broker, ident)
    up2.start()
    try:
        assert up2.wait_synced(20), f"new card not synced: acked {new.acked_seq}"
        assert up2.stats.get("mismatched_acks", 0) == 0
    finally:
        up2.stop()
    up3 = signed_uplink(old, broker, ident)  # the old card is found and syncs
    up3.start()
    try:
        assert up3.wait_synced(20)
    finally:
        up3.stop()
    rows = hub.export()
    by_epoch: dict[str, list[int]] = {}
    for r in rows:
        by_epoch.setdefault(r["epoch"], []).append(r["seq"])
    assert by_epoch == {old.epoch: list(range(1, 171)), new.epoch: list(range(1, 41))}
    rep = hub.report()
    assert rep["totals"]["chain_breaks"] == 0
    assert sorted((i["epoch"], i["contiguous_seq"])
                  for i in rep["terminals"]["bus-1"]["incarnations"]) == sorted(
        [(old.epoch, 170), (new.epoch, 40)])
    import subprocess
    import sys
    human = subprocess.run([sys.executable, "-m", "agent.cli", "hub", "report", "--db",
                            str(db)], capture_output=True, text=True, check=True).stdout
    assert f"epoch {old.epoch}: 170 records" in human
    assert f"epoch {new.epoch}: 40 records" in human
    hub.stop()


@pytest.mark.expect_log("sync.uplink", "lost at the hub")
def test_records_pruned_before_the_hub_lost_them_are_reported(
        broker: Mosquitto, trust: TrustDirs, tmp_path: Path) -> None:
    """The hub's store is replaced by one that lost 101..300 while the terminal had
    pruned them: the terminal reports records_lost_at_hub (status and journal event),
    resends what it holds with a signed statement of the range it cannot supply, and the
    hub's chain (and the terminal's acks) go on past it."""
    ident = trust.enroll("bus-1", tmp_path)
    db = tmp_path / "hub.db"
    hub = HubProcess(db, broker, tmp_path, identity=trust.hub)
    hub.start()
    journal = Journal(tmp_path / "j.db", "bus-1")
    fill(journal, 100)
    up = signed_uplink(journal, broker, ident, retention_s=0)
    up.start()
    try:
        assert up.wait_synced(20)
        hub.stop()
        import shutil
        shutil.copy(db, tmp_path / "backup.db")
        hub.start()
        fill(journal, 200)
        up.notify()
        assert up.wait_synced(20)
        assert up.prune() > 0 and journal.first_seq == 300
        hub.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        (tmp_path / "backup.db").rename(db)
        hub.start()  # not reincarnated: the lower ack answering a new batch tells
        fill(journal, 5)
        up.notify()
        wait_until(lambda: up.stats["resyncs"] == 1, 20, "the resync")

        def lost_events() -> list[dict[str, Any]]:
            return [r.body for r in journal.records(300, 100)
                    if r.body.get("event") == "records_lost_at_hub"]
        # the counter moves before the event is journaled (the uplink thread): wait for it
        wait_until(lambda: bool(lost_events()), 20, "the records_lost_at_hub event")
        lost = up.status_payload()["records_lost_at_hub"]
        assert [(x["from"], x["to"]) for x in lost] == [(101, 299)]
        assert len(lost_events()) == 1
        # not stuck: the signed skip lets the hub's chain go on, so acks advance again
        assert up.wait_synced(20), f"stuck at {journal.acked_seq}/{journal.last_seq}"
        assert [r["seq"] for r in hub.export()] == list(range(1, 101)) + list(
            range(300, journal.last_seq + 1))
        rep = hub.report()
        assert rep["terminals"]["bus-1"]["contiguous_seq"] == journal.last_seq
        assert [(b["seq"], "lost at the hub" in b["problem"])
                for b in rep["chain_breaks"]] == [(101, True)]
        fill(journal, 3)
        up.notify()
        assert up.wait_synced(20)
    finally:
        up.stop()
        hub.stop()


def test_the_agent_daemon_with_an_identity_speaks_v2(tmp_path: Path) -> None:
    """``ykt agent run`` with ``[identity] dir`` (enrolled over the hub's HTTPS endpoint):
    over mutual TLS, its records reach a ``--identity`` hub signed, under its journal's
    epoch, and are acked."""
    import signal
    import subprocess
    import sys

    from simulator.trust import secure_demo
    from tests.fixtures.logguard import watch_stderr

    secure = secure_demo(tmp_path / "trust", "BUS-T1", [])
    broker, ident = secure.broker, secure.terminal_identity
    hub = HubProcess(tmp_path / "hub.db", broker, tmp_path, identity=secure.hub_identity,
                     env=secure.hub_env)
    hub.start()
    cfg = tmp_path / "terminal.toml"
    cfg.write_text(f'[terminal]\nid = "BUS-T1"\ndata_dir = "{tmp_path / "data"}"\n'
                   'demo = true\n[cards]\nbackend = "sim"\n'
                   'options = { rate_per_min = 3000, population_size = 30 }\n'
                   f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                   f'[identity]\ndir = "{ident}"\n')
    log = tmp_path / "agent.log"
    watch_stderr(log, "agent process")
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "-v", "agent", "run",
                                 "--config", str(cfg)], stderr=err, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: any("sig" in r for r in hub.export()), 60,
                   "a signed batch of the agent at the hub")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        hub.stop()
        secure.close()
    epoch = Journal(tmp_path / "data" / "journal.db", "BUS-T1").epoch
    rows = hub.export()
    assert epoch and {r["epoch"] for r in rows} == {epoch}
    assert hub.report()["totals"]["rejected"] == {}
