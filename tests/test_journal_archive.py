"""A terminal offline for weeks carries its journal to the hub on a USB stick:
`ykt journal export` → `ykt hub import` stores every record exactly once, signed and
chained, also when part of it had already arrived over MQTT, and a tampered archive is
refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.journal import Journal
from simulator.broker import Mosquitto
from sync.acks import UplinkIdentity
from tests.fixtures.hub import HubProcess
from tests.fixtures.trust import make_trust
from tests.test_uplink import fill, make_uplink

ROOT = Path(__file__).resolve().parents[1]


def _ykt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def _hub_records(db: Path) -> list[dict[str, Any]]:
    r = _ykt("hub", "export", "--db", str(db))
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_weeks_offline_by_usb_stick_exactly_once(tmp_path: Path, broker: Mosquitto) -> None:
    trust = make_trust(tmp_path)
    ident = trust.enroll("bus-usb", tmp_path)
    data = tmp_path / "data"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[terminal]\nid = "bus-usb"\ndata_dir = "{data}"\ndemo = true\n'
                   f'[identity]\ndir = "{ident}"\n', encoding="utf-8")
    journal = Journal(data / "journal.db", "bus-usb")
    hub = HubProcess(tmp_path / "hub.db", broker, tmp_path, identity=trust.hub)
    hub.start()
    # the first 300 records reach the hub over MQTT, then the bus leaves coverage
    up = make_uplink(journal, broker)
    up.identity = UplinkIdentity.load(ident)
    up.epoch = journal.epoch
    up.start()
    try:
        fill(journal, 300)
        up.notify()
        assert up.wait_synced(30)
    finally:
        up.stop()
    hub.stop()
    fill(journal, 900)                                   # weeks offline
    journal.close()
    stick = tmp_path / "usb" / "bus-usb.ykt"
    stick.parent.mkdir()
    r = _ykt("journal", "export", "--config", str(cfg), "--to", str(stick), "--since", "1",
             "--json")
    assert r.returncode == 0, r.stderr
    header = json.loads(r.stdout)
    assert (header["from"], header["to"], header["signed"]) == (1, 1200, True)
    assert "bus-usb" in stick.read_text() and "body" in stick.read_text()
    db = tmp_path / "hub.db"
    r = _ykt("hub", "import", str(stick), "--db", str(db), "--identity", str(trust.hub),
             "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert (done["stored"], done["duplicates"], done["rejected"]) == (900, 300, 0)
    again = json.loads(_ykt("hub", "import", str(stick), "--db", str(db), "--identity",
                            str(trust.hub), "--json").stdout)
    assert (again["stored"], again["duplicates"]) == (0, 1200)      # exactly once
    records = [r for r in _hub_records(db) if r["terminal"] == "bus-usb"]
    assert sorted(r["seq"] for r in records) == list(range(1, 1201))
    report = json.loads(_ykt("hub", "report", "--db", str(db), "--json").stdout)
    assert report["totals"]["chain_breaks"] == 0 and report["totals"]["terminals_with_gaps"] == 0


def test_a_tampered_or_unsigned_archive_is_refused(tmp_path: Path) -> None:
    trust = make_trust(tmp_path)
    ident = trust.enroll("bus-usb", tmp_path)
    data = tmp_path / "data"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[terminal]\nid = "bus-usb"\ndata_dir = "{data}"\ndemo = true\n'
                   f'[identity]\ndir = "{ident}"\n', encoding="utf-8")
    journal = Journal(data / "journal.db", "bus-usb")
    fill(journal, 50)
    journal.close()
    stick = tmp_path / "a.ykt"
    assert _ykt("journal", "export", "--config", str(cfg), "--to", str(stick)).returncode == 0
    lines = stick.read_text(encoding="utf-8").splitlines()
    forged = lines[1].replace('"amount_cents":200', '"amount_cents":1', 1)   # a fare altered
    assert forged != lines[1]
    bad = tmp_path / "forged.ykt"
    bad.write_text("\n".join([lines[0], forged]) + "\n", encoding="utf-8")
    db = tmp_path / "hub.db"
    r = _ykt("hub", "import", str(bad), "--db", str(db), "--identity", str(trust.hub),
             "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["rejected"] == 1
    assert not db.exists() or _hub_records(db) == [], "nothing of a forged batch is stored"
    r = _ykt("hub", "import", str(tmp_path / "t.toml"), "--db", str(db))
    assert r.returncode == 2 and "not a journal archive" in r.stderr
