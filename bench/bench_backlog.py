"""Backlog flush: journaled records → hub after an outage, batched vs one message per record.

Run: ``.venv/bin/python -m bench.bench_backlog [--records 100000] [--naive-records 10000]``

Both runs go through a real Mosquitto to the hub running as a separate process
(``ykt hub run``, SQLite with ``synchronous=FULL``), and both are timed end to end: from
the first publish until the hub's ack for the last record has reached the terminal.

* **batched** — :class:`sync.uplink.Uplink` (500 records per tx message, 8 in flight);
* **signed** — the same with protocol v2 (``docs/protocol.md`` §10): each batch's head
  signed by the terminal (ECDSA P-256), verified by a hub run with ``--identity`` before
  it stores anything, each ack signed by the hub and verified by the terminal; target
  ≥ 80 % of the plain batched rate in the same run;
* **naive** — one QoS 1 MQTT message per record (paho's default 20 in flight), each a
  one-record tx payload the hub commits and acknowledges on its own.

Prints a table and writes it to ``bench/README.md`` (section ``backlog``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.journal import Journal
from bench.report import machine, table, update_section
from simulator.broker import Mosquitto
from simulator.trust import secure_demo
from sync.acks import UplinkIdentity
from sync.link import MqttSettings
from sync.topics import TerminalTopics
from sync.uplink import Uplink, UplinkSettings, encode_batch
from tests.fixtures.trust import make_trust

ROOT = Path(__file__).resolve().parents[1]


def journal_with(path: Path, terminal: str, n: int) -> tuple[Journal, float]:
    """A journal of ``n`` realistic records; returns it and the append rate (records/s)."""
    j = Journal(path, terminal)
    t0 = time.perf_counter()
    for i in range(n):
        j.append({"decision": {"product": ("elderly_free", "standard", "student")[i % 3],
                               "reason": "accepted", "amount_cents": 200 if i % 3 == 1 else 0,
                               "rule_id": "r1", "policy_version": "2026.11.1"},
                  "credential": {"kind": "ssc_card", "credential_key": f"{i:032x}",
                                 "holder_key": f"{i * 7:032x}", "region": "370100",
                                 "generation": "3.0", "auth": "psam:sm4"},
                  "profile": "bus_validator",
                  "location": {"route": "K51", "vehicle": "LU-A1234", "stop": "S17"}})
    return j, n / (time.perf_counter() - t0)


def start_hub(db: Path, broker: Mosquitto, identity: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    extra = [] if identity is None else ["--identity", str(identity)]
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "hub", "run", "--db", str(db),
                             "--host", broker.host, "--port", str(broker.port), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("hub ready"):
        proc.kill()
        raise RuntimeError("hub did not start")
    return proc


def stop_hub(hub: subprocess.Popen[str]) -> None:
    hub.terminate()
    hub.wait(10)
    if hub.stdout is not None:
        hub.stdout.close()


def run_batched(journal: Journal, settings: MqttSettings,
                identity: UplinkIdentity | None = None) -> float:
    """Seconds to flush the whole journal with the uplink (signed with ``identity``)."""
    up = Uplink(journal, settings, journal.terminal, options=UplinkSettings(),
                identity=identity)
    t0 = time.perf_counter()
    up.start()
    try:
        if not up.wait_synced(600):
            raise RuntimeError(f"batched flush incomplete: {journal.acked_seq}")
        return time.perf_counter() - t0
    finally:
        up.stop()


def run_naive(journal: Journal, broker: Mosquitto) -> float:
    """Seconds to send each record as its own QoS 1 message until the hub acks the last."""
    topics = TerminalTopics(journal.terminal)
    last = journal.last_seq
    done = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if json.loads(msg.payload)["seq"] >= last:
            done.set()

    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe(str(topics.ack), qos=1)
    subscribed.wait(10)
    rows = journal.raw_records(0, last)
    t0 = time.perf_counter()
    for row in rows:
        c.publish(str(topics.tx), encode_batch(journal.terminal, [row]), qos=1)
    if not done.wait(600):
        raise RuntimeError("naive flush incomplete")
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000, help="records for the batched run")
    ap.add_argument("--naive-records", type=int, default=10_000,
                    help="records for the naive one-message-per-record run")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/README.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ykt-bench-") as tmp, \
            Mosquitto(workdir=Path(tmp) / "mqtt", persistence=False) as broker:
        d = Path(tmp)
        settings = MqttSettings(host=broker.host, port=broker.port)
        print(f"journaling {args.records} + {args.naive_records} records…", flush=True)
        batched_j, append_rate = journal_with(d / "batched.db", "bench-batched", args.records)
        signed_j, _ = journal_with(d / "signed.db", "bench-signed", args.records)
        naive_j, _ = journal_with(d / "naive.db", "bench-naive", args.naive_records)
        trust = make_trust(d)
        identity = UplinkIdentity.load(trust.enroll("bench-signed", d))
        hub = start_hub(d / "hub.db", broker)
        try:
            naive_s = run_naive(naive_j, broker)
            batched_s = run_batched(batched_j, settings)
        finally:
            stop_hub(hub)
        hub = start_hub(d / "hub-signed.db", broker, trust.hub)
        try:
            signed_s = run_batched(signed_j, settings, identity)
        finally:
            stop_hub(hub)
        # the production path: mutual TLS on the broker `ykt hub broker-config` writes
        # (dynamic-security ACLs), an enrolled terminal, signed batches and acks
        tls_j, _ = journal_with(d / "tls.db", "bench-tls", args.records)
        secure = secure_demo(d / "tls", "bench-tls", [])
        try:
            hub = start_hub(d / "hub-tls.db", secure.broker, secure.hub_identity,
                            secure.hub_env)
            try:
                tls_settings = MqttSettings(host=secure.broker.host, port=secure.broker.port
                                            ).with_identity(secure.terminal_identity)
                tls_s = run_batched(tls_j, tls_settings,
                                    UplinkIdentity.load(secure.terminal_identity))
            finally:
                stop_hub(hub)
        finally:
            secure.close()
        batched_rate = args.records / batched_s
        signed_rate = args.records / signed_s
        naive_rate = args.naive_records / naive_s
        ratio = batched_rate / naive_rate
        signed_share = signed_rate / batched_rate
        tls_rate = args.records / tls_s
        tls_share = tls_rate / batched_rate
    rows: list[list[object]] = [
        ["batched uplink (500/msg, 8 in flight)", args.records, f"{batched_s:.2f}",
         f"{batched_rate:,.0f}", f"{ratio:.1f}×"],
        ["signed v2 (heads + acks signed, ECDSA P-256)", args.records, f"{signed_s:.2f}",
         f"{signed_rate:,.0f}", f"{signed_rate / naive_rate:.1f}×"],
        ["TLS + signed v2 (mutual TLS, dynsec ACLs, enrolled terminal)", args.records,
         f"{tls_s:.2f}", f"{tls_rate:,.0f}", f"{tls_rate / naive_rate:.1f}×"],
        ["naive: 1 record per QoS 1 message", args.naive_records, f"{naive_s:.2f}",
         f"{naive_rate:,.0f}", "1.0×"],
    ]
    ok = ratio >= 10 and signed_share >= 0.8 and tls_share >= 0.8
    md = (f"## Backlog flush (journal → broker → hub)\n\n"
          f"{machine()}. Real Mosquitto, hub as a separate process (SQLite, "
          f"synchronous=FULL), timed until the hub's ack of the last record reaches the "
          f"terminal. Target: batched ≥ 10× naive. Journal append rate while filling: "
          f"{append_rate:,.0f} records/s.\n\n"
          + table(["method", "records", "seconds", "records/s", "vs naive"], rows)
          + f"\n\n{'PASS' if ok else 'FAIL'}: ratio {ratio:.1f}× (target ≥ 10×); signed "
          f"v2 over plain TCP keeps {signed_share:.0%}, TLS + signed v2 keeps "
          f"{tls_share:.0%} of the plain unsigned TCP rate (target ≥ 80 %).\n")
    print(md)
    if not args.no_write:
        update_section("backlog", md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
