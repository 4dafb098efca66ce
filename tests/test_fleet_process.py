"""``ykt hub fleet`` against real hub processes, a real broker and real databases:

* the same traffic into a hub on SQLite and a hub on PostgreSQL gives the same fleet;
* a stopped terminal keeps its last known policy, outbox, clock and alarms;
* the clock offset comes from a ``cmd`` → ``cmd/result`` round trip: ~0 within its error
  for a terminal on the same host, +500 s for a daemon whose clock is 500 s ahead;
  ``ykt diag`` shows the hub's measurement;
* with identities, unsigned, forged and replayed commands are refused by the terminal;
* ``--offline``/``--stale``/``--alarms`` exit 1 when a terminal matches, else 0.

Waits are on counters and database rows, never on sleeps.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.cli import main
from agent.commands import Command, CommandResponder, ReplayMemory, encode_command
from agent.config import AgentConfig
from agent.control import SOCKET_NAME, ask
from agent.daemon import Terminal
from agent.identity import TerminalIdentityPaths, load_private_key, load_public_key
from agent.journal import Journal, utc_stamp
from drivers.prompt import SimPrompter
from simulator.broker import Mosquitto
from sync.acks import UplinkIdentity
from sync.commands import attach
from sync.hub.fleet import render
from sync.hub.fleetstore import FleetStore, open_fleet_store
from sync.uplink import Uplink, UplinkSettings
from tests.fixtures.hub import HubProcess, Listener, fast_settings, wait_until
from tests.fixtures.tls_broker import TlsBroker
from tests.fixtures.trust import make_trust
from tests.test_hub import fill

CHANNEL = "test/fleet"
MOVING = {"last_seen", "offline_since", "state_as_of", "outbox_as_of", "outbox_age_s",
          "clock_offset_s", "clock_error_s", "clock_measured_at", "policy_latest_at"}
"""Fleet fields that depend on when each hub heard or measured: compared separately."""


def manifest(version: int) -> bytes:
    """A (retained) envelope as the broker carries it; the hub reads channel and version."""
    signed = {"type": "ykt-policy-manifest", "channel": CHANNEL, "version": version,
              "created": "2026-11-01T00:00:00Z", "expires": "2099-01-01T00:00:00Z",
              "root_serial": 1, "parts": []}
    return json.dumps({"manifest": {"signed": signed, "signatures": []}}).encode()


def fleet(db: Path | str, capsys: pytest.CaptureFixture[str], *flags: str
          ) -> tuple[int, list[dict[str, Any]]]:
    code = main(["hub", "fleet", "--db", str(db), "--json", *flags])
    return code, json.loads(capsys.readouterr().out)


def measured(store: FleetStore, *terminals: str) -> bool:
    snap = store.snapshot()
    return all((snap.terminals.get(t) or {}).get("clock") for t in terminals)


class FakeTerminal:
    """A journal, an uplink with the status a daemon would send, and the command
    responder wired as the daemon wires it (:func:`sync.commands.attach`)."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, terminal: str, status: dict[str, Any],
                 identity: Path | None = None) -> None:
        self.journal = Journal(tmp_path / f"{terminal}.db", terminal)
        fill(self.journal, 30)
        ident = None if identity is None else UplinkIdentity.load(identity)
        self.uplink = Uplink(self.journal, fast_settings(broker), terminal,
                             status=lambda: dict(status), identity=ident,
                             options=UplinkSettings(batch_records=10, ack_timeout_s=2.0))
        hub_key = key = None
        if identity is not None:
            paths = TerminalIdentityPaths(identity)
            hub_key, key = load_public_key(paths.hub_key), load_private_key(paths.key)
        self.commands = CommandResponder(
            terminal, lambda: {"time_us": round(time.time() * 1e6), "clock": "synced",
                               "last_seq": self.journal.last_seq,
                               "acked_seq": self.journal.acked_seq,
                               "outbox": self.journal.pending_count},
            hub_key=hub_key, key=key, memory=ReplayMemory(self.journal))
        attach(self.uplink.link, terminal, self.commands)
        self.uplink.start()

    def close(self) -> None:
        self.uplink.stop()
        self.journal.close()


def test_fleet_on_postgresql_equals_fleet_on_sqlite_and_a_stopped_terminal_keeps_its_state(
        broker: Mosquitto, tmp_path: Path, pg_dsn: str, listener: Listener,
        capsys: pytest.CaptureFixture[str]) -> None:
    for d in ("sqlite", "pg"):
        (tmp_path / d).mkdir()
    lite = HubProcess(tmp_path / "hub.db", broker, tmp_path / "sqlite", share_group="lite")
    pg = HubProcess(pg_dsn, broker, tmp_path / "pg", share_group="pg")
    lite.start()
    pg.start()
    stores: list[FleetStore] = []
    terminals: list[FakeTerminal] = []
    try:
        listener.publish(f"ykt/v1/policy/{CHANNEL}/manifest", manifest(3), retain=True)
        terminals = [
            FakeTerminal(tmp_path, broker, "BUS-A", {"policy": f"{CHANNEL}@3", "alarms": [],
                                                     "clock": "synced", "profile": "bus"}),
            FakeTerminal(tmp_path, broker, "BUS-B", {"policy": f"{CHANNEL}@2",
                                                     "alarms": ["disk_low"], "clock": "rtc",
                                                     "profile": "bus",
                                                     "policy_expires": "2099-01-01T00:00:00Z"}),
        ]
        for t in terminals:
            assert t.uplink.wait_synced(30)
        stores = [open_fleet_store(tmp_path / "hub.db"), open_fleet_store(pg_dsn)]
        wait_until(lambda: all(measured(s, "BUS-A", "BUS-B") and CHANNEL in
                               s.snapshot().policies for s in stores), 30,
                   "both hubs to measure both terminals and see the manifest")
        # acked statuses: the heartbeat after the last ack (its outbox is 0 then)
        for t in terminals:
            t.uplink.publish_status()

        def same_everywhere() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            a, b = fleet(tmp_path / "hub.db", capsys)[1], fleet(pg_dsn, capsys)[1]
            return a, b

        def steady(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
            strip = [[{k: v for k, v in r.items() if k not in MOVING} for r in rows]
                     for rows in (a, b)]
            return strip[0] == strip[1]

        wait_until(lambda: steady(*same_everywhere()), 30, "the same fleet on both stores")
        rows_lite, rows_pg = same_everywhere()
        for rows in (rows_lite, rows_pg):
            by = {r["terminal"]: r for r in rows}
            assert by["BUS-A"]["online"] and by["BUS-B"]["online"]
            assert by["BUS-A"]["policy_latest"] == 3 and not by["BUS-A"]["stale"]
            assert by["BUS-B"]["policy_behind"] == 1 and not by["BUS-B"]["stale"]  # rolling out
            assert by["BUS-A"]["outbox"] == 0 and by["BUS-A"]["outbox_age_s"] == 0.0
            for r in rows:       # same host: the round trip says 0, within its error
                assert abs(r["clock_offset_s"]) <= r["clock_error_s"], r
        assert fleet(pg_dsn, capsys, "--offline") == (0, [])
        assert fleet(pg_dsn, capsys, "--stale") == (0, [])
        code, stale = fleet(pg_dsn, capsys, "--stale", "--stale-after", "0")
        assert code == 1 and [r["terminal"] for r in stale] == ["BUS-B"]
        code, alarmed = fleet(tmp_path / "hub.db", capsys, "--alarms")
        assert code == 1 and [r["terminal"] for r in alarmed] == ["BUS-B"]

        terminals[1].close()                      # BUS-B stops: its last will says offline
        wait_until(lambda: all(not s.snapshot().terminals["BUS-B"]["online"] for s in stores),
                   30, "both hubs to see BUS-B offline")
        rows_lite, rows_pg = same_everywhere()
        assert steady(rows_lite, rows_pg)
        for rows in (rows_lite, rows_pg):
            b = {r["terminal"]: r for r in rows}["BUS-B"]
            assert not b["online"] and b["offline_since"] is not None
            assert b["policy"] == f"{CHANNEL}@2" and b["policy_behind"] == 1
            assert b["alarms"] == ["disk_low"] and b["clock"] == "rtc"
            assert b["outbox"] == 0 and b["clock_offset_s"] is not None
        for db in (tmp_path / "hub.db", pg_dsn):
            code, off = fleet(db, capsys, "--offline")
            assert code == 1 and [r["terminal"] for r in off] == ["BUS-B"]
        assert main(["hub", "fleet", "--db", pg_dsn, "--offline"]) == 1
        text = capsys.readouterr().out
        assert "BUS-B" in text and "offline" in text and "disk_low" in text
    finally:
        for t in terminals:
            t.close()
        for s in stores:
            s.close()
        listener.publish(f"ykt/v1/policy/{CHANNEL}/manifest", b"", retain=True)
        lite.stop()
        pg.stop()


def _daemon(tmp_path: Path, broker: Mosquitto, terminal: str, shift_s: float
            ) -> tuple[Terminal, Path]:
    data = tmp_path / terminal
    cfg = {"terminal": {"id": terminal, "data_dir": str(data), "demo": True},
           "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.05,
                    "reconnect_max_s": 0.5}}
    cfg_file = tmp_path / f"{terminal}.toml"
    cfg_file.write_text(f'[terminal]\nid = "{terminal}"\ndemo = true\ndata_dir = "{data}"\n'
                        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n',
                        encoding="utf-8")
    clock = (lambda: time.time() + shift_s) if shift_s else time.time
    t = Terminal(AgentConfig.model_validate(cfg), actuators=[SimPrompter()], clock=clock)
    t._sources_override = []
    t.start()
    return t, cfg_file


def test_the_round_trip_measures_a_daemons_clock_and_diag_shows_it(
        broker: Mosquitto, tmp_path: Path, hub_process: HubProcess,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Same host: 0 within the error (the old status-based figure said −21 s). A daemon
    whose clock runs 500 s ahead: +500 s within the error, at the hub and in ``ykt diag``
    (which fails it: beyond the tolerance)."""
    hub_process.start()
    daemons = [_daemon(tmp_path, broker, "BUS-OK", 0.0),
               _daemon(tmp_path, broker, "BUS-FAST", 500.0)]
    store = open_fleet_store(tmp_path / "hub.db")
    try:
        wait_until(lambda: measured(store, "BUS-OK", "BUS-FAST"), 30, "both measured")
        rows = {r["terminal"]: r for r in fleet(tmp_path / "hub.db", capsys)[1]}
        ok, fast = rows["BUS-OK"], rows["BUS-FAST"]
        assert abs(ok["clock_offset_s"]) <= ok["clock_error_s"]
        assert abs(fast["clock_offset_s"] - 500.0) <= fast["clock_error_s"]
        for t, _cfg in daemons:                   # the hub tells each daemon its figure
            sock = t.cfg.terminal.data_dir / SOCKET_NAME
            wait_until(lambda s=sock: (ask(s, "clock") or {}).get("offset_s") is not None,
                       30, "the hub's clock command")
        assert main(["diag", "--config", str(daemons[1][1]), "--json"]) == 1
        check = next(c for c in json.loads(capsys.readouterr().out)
                     if c["name"] == "clock vs hub")
        said = re.match(r"offset ([-+][0-9.]+) s ± ([0-9.]+) s", check["detail"])
        assert check["ok"] is False and said is not None
        assert abs(float(said[1]) - 500.0) <= float(said[2]) + 0.001    # printed in ms
        main(["diag", "--config", str(daemons[0][1]), "--json"])
        check = next(c for c in json.loads(capsys.readouterr().out)
                     if c["name"] == "clock vs hub")
        assert check["ok"] is True and "±" in check["detail"]
    finally:
        store.close()
        for t, _cfg in daemons:
            t.stop()
    # the daemon is down: unknown, with what to do — not a failure
    main(["diag", "--config", str(daemons[0][1]), "--json"])
    check = next(c for c in json.loads(capsys.readouterr().out) if c["name"] == "clock vs hub")
    assert check["ok"] is None and "not running" in check["detail"]


def test_the_terminal_refuses_unsigned_forged_and_replayed_commands(
        broker: Mosquitto, tmp_path: Path, listener: Listener) -> None:
    trust = make_trust(tmp_path)
    ident = trust.enroll("bus-1", tmp_path)
    hub = HubProcess(tmp_path / "hub.db", broker, tmp_path, identity=trust.hub)
    hub.start()
    listener.subscribe("ykt/v1/t/bus-1/#")
    term = FakeTerminal(tmp_path, broker, "bus-1", {"policy": "", "alarms": []}, ident)
    store = open_fleet_store(tmp_path / "hub.db")
    try:
        wait_until(lambda: measured(store, "bus-1"), 30, "a signed round trip")
        wait_until(lambda: term.commands.stats["answered"] >= 2, 30, "the clock command")
        captured = listener.got("ykt/v1/t/bus-1/cmd")[0]
        answered = term.commands.stats["answered"]
        other = ec.generate_private_key(ec.SECP256R1())

        def command(n: int) -> Command:
            return Command("bus-1", secrets.token_hex(16), n, secrets.token_hex(16), "time")

        listener.publish("ykt/v1/t/bus-1/cmd", encode_command(None, command(1)))
        listener.publish("ykt/v1/t/bus-1/cmd", encode_command(other, command(1)))
        listener.publish("ykt/v1/t/bus-1/cmd", captured)
        stats = term.commands.stats
        wait_until(lambda: stats.get("unsigned_cmd") == 1 and stats.get("forged_cmd") == 1
                   and stats.get("replayed_cmd") == 1, 10, "three refusals")
        assert stats["answered"] == answered
        results = [json.loads(p) for p in listener.got("ykt/v1/t/bus-1/cmd/result")]
        assert len(results) == answered and all(r["v"] == 2 and r["sig"] for r in results)
    finally:
        store.close()
        term.close()
        hub.stop()


def test_columns_line_up_in_chinese() -> None:
    """Padded by display width: a wide character takes two columns."""
    now = time.time()
    base: dict[str, Any] = {
        "online": True, "last_seen": utc_stamp(now), "offline_since": None,
        "state_as_of": None, "profile": "", "policy": "", "policy_channel": "",
        "policy_version": None, "policy_latest": None, "policy_latest_at": None,
        "policy_behind": None,
        "policy_expires": "", "policy_expired": False, "policy_state": "",
        "policy_refusal": "", "stale": False, "outbox": 3, "outbox_oldest": None,
        "outbox_age_s": 75.0, "outbox_as_of": utc_stamp(now), "clock_offset_s": 0.01,
        "clock_error_s": 0.002, "clock_measured_at": None, "clock": "synced", "alarms": []}
    rows = [{**base, "terminal": "博物馆-北门闸机"}, {**base, "terminal": "BUS-1"}]
    from agent.textcols import display_width

    lines = render(rows, now).splitlines()  # type: ignore[arg-type]
    # every column but the last (alarms, not padded) ends at the same display column
    assert len({display_width(line.rsplit("  ", 1)[0]) for line in lines}) == 1, lines
    assert len({len(line.rsplit("  ", 1)[0]) for line in lines}) == 2    # not by len()
    assert "+0.010±0.002s" in lines[1]


def test_outbox_depth_and_age_come_from_the_freshest_report_and_the_hubs_own_chain() -> None:
    """The command result (newer than the 30 s heartbeat) wins; records the hub has stored
    since are not pending; the oldest one's age is corrected by the measured offset."""
    from sync.hub.fleet import fleet_rows
    from sync.hub.fleetstore import FleetSnapshot

    now = 1_800_000_000.0
    status = {"state": "online", "last_seq": 40, "acked_seq": 28, "outbox": 12,
              "oldest_unsynced": utc_stamp(now - 600), "epoch": ""}
    reading = {"last_seq": 45, "acked_seq": 30, "outbox": 15,
               "oldest_unsynced": utc_stamp(now - 300 + 20)}     # terminal clock +20 s
    snap = FleetSnapshot(terminals={"BUS-1": {
        "online": True, "status": status, "status_at": now - 25, "offline_since": None,
        "reading": reading, "reading_at": now - 2, "clock": {
            "offset_us": 20_000_000, "error_us": 3000, "rtt_us": 6000,
            "measured_at": now - 2, "hub": "a" * 32}}})
    row = fleet_rows({"BUS-1": {"contiguous_seq": 33, "epoch": ""}}, snap, now)[0]
    assert row["outbox"] == 45 - 33 and row["outbox_age_s"] == 300.0
    assert row["outbox_as_of"] == utc_stamp(now - 2) and row["clock_offset_s"] == 20.0
    row = fleet_rows({"BUS-1": {"contiguous_seq": 45, "epoch": ""}}, snap, now)[0]
    assert row["outbox"] == 0 and row["outbox_age_s"] == 0.0 and row["outbox_oldest"] is None
    silent = fleet_rows({}, snap, now + 600)[0]          # no news for 10 minutes
    assert not silent["online"] and silent["outbox"] == 12 + 3


def test_a_daemon_with_an_identity_answers_signed_commands_over_mutual_tls(
        tls_broker: TlsBroker, tmp_path: Path) -> None:
    """The production path: the broker ``ykt hub broker-config`` writes (mutual TLS, the
    ACLs), the hub with its identity, a daemon enrolled as ``A`` whose clock is 30 s
    behind. The signed ``time`` round trip gives −30 s within its error, at the hub and
    in the daemon (its control socket's ``clock``), and nothing failed on either link."""
    from sync.hub.service import Hub
    from sync.hub.store import SqliteHubStore
    from sync.hub.trust import HubTrust

    tb = tls_broker
    ident = tb.root / "A"
    shutil.copyfile(tb.ca.paths.signing_pub, ident / "hub-signing.pub")
    store = SqliteHubStore(tmp_path / "hub.db")
    fleet_store = open_fleet_store(tmp_path / "hub.db")
    hub = Hub(store, tb.settings("hub").model_copy(update={"reconnect_min_s": 0.05,
                                                           "reconnect_max_s": 0.5}),
              client_id="hub-1", trust=HubTrust(tb.ca.paths.dir), fleet=fleet_store)
    hub.start()
    cfg = {"terminal": {"id": "A", "data_dir": str(tmp_path / "A"), "demo": True},
           "mqtt": {"host": "127.0.0.1", "port": tb.broker.port, "reconnect_min_s": 0.05,
                    "reconnect_max_s": 0.5},
           "identity": {"dir": str(ident)}}
    t = Terminal(AgentConfig.model_validate(cfg), actuators=[SimPrompter()],
                 clock=lambda: time.time() - 30.0)
    t._sources_override = []
    try:
        assert hub.wait_ready(10)
        t.start()
        assert hub.probe is not None and hub.probe.wait_measured(1, 30)
        clock = fleet_store.snapshot().terminals["A"]["clock"]
        assert abs(clock["offset_us"] + 30_000_000) <= clock["error_us"]
        sock = t.cfg.terminal.data_dir / SOCKET_NAME
        wait_until(lambda: (ask(sock, "clock") or {}).get("offset_s") is not None, 30,
                   "the hub's signed clock command at the daemon")
        mine = ask(sock, "clock") or {}
        assert abs(mine["offset_s"] + 30.0) <= mine["error_s"]
        assert set(t.commands.stats) == {"answered"}      # nothing refused
    finally:
        t.stop()
        hub.stop()
        fleet_store.close()
        store.close()
    assert hub.link.callback_errors == 0
