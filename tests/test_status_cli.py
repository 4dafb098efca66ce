"""`ykt status` from the running daemon's control socket, and from the files when it is
down; it agrees with the daemon's own state while a bundle is being applied and after.
`ykt sync now` wakes the uplink. Garbage on the socket never stops the daemon."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import AgentConfig
from agent.control import SOCKET_NAME, ask
from agent.daemon import Terminal
from agent.policy.stage import ApplyPlan
from drivers.prompt import SimPrompter
from drivers.sim_cards import SimCardSource
from simulator.broker import Mosquitto
from sync.hub.policy import BundleSources
from tests.fixtures.policy import PolicyEnv
from tests.policy_daemon import PolicyDaemon, publish_envelope


def _status(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--config", str(cfg), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_status_from_the_daemon_then_from_the_files(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text('[terminal]\nid = "BUS-ST"\ndemo = true\n'
                        f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nenabled = false\n',
                        encoding="utf-8")
    terminal = Terminal(AgentConfig.model_validate({
        "terminal": {"id": "BUS-ST", "data_dir": str(tmp_path / "data"), "demo": True},
        "mqtt": {"enabled": False}}), actuators=[SimPrompter()])
    cards = SimCardSource(terminal.pseudonymizer, population_size=20)
    terminal._sources_override = [cards]
    terminal.start()
    try:
        for h in cards.population.holders[:3]:
            cards.tap(h)
        assert terminal.drain(10)
        code, st = _status(cfg_file, capsys)
        assert code == 0 and st["source"] == "daemon" and st["daemon"] == "running"
        own = terminal.status()
        for k in ("terminal", "policy", "last_seq", "acked_seq", "alarms"):
            assert st[k] == own[k], k
        assert st["last_seq"] == 3 and len(st["last_decisions"]) == 3
        assert st["outbox"] == 3 and st["oldest_unsynced"]
        # garbage on the socket: an error reply, and the daemon still answers
        sock = tmp_path / "data" / SOCKET_NAME
        for junk in (b"not json\n", b"[1,2]\n", b'{"cmd": "reboot"}\n', b"{" * 5000 + b"\n"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(sock))
                s.sendall(junk)
                assert "error" in json.loads(s.makefile().readline())
        assert ask(sock, "status") is not None
        text = main(["status", "--config", str(cfg_file)])
        out = capsys.readouterr().out
        assert text == 0 and "BUS-ST" in out and "alarms: none" in out
        assert main(["sync", "now", "--config", str(cfg_file)]) == 1    # mqtt disabled
        assert "does not sync" in capsys.readouterr().err
    finally:
        terminal.stop()
    code, st = _status(cfg_file, capsys)
    assert code == 1 and st["source"] == "files" and st["daemon"] == "not running"
    assert st["last_seq"] == 3 and st["terminal"] == "BUS-ST"
    assert not (tmp_path / "data" / SOCKET_NAME).exists()


class HeldRunner:
    """The terminal's own runner, held at its start until released (an apply in flight)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.entered, self.release = inner, threading.Event(), threading.Event()

    def run(self, plan: ApplyPlan) -> None:
        self.entered.set()
        assert self.release.wait(30)
        self.inner.run(plan)


def test_status_agrees_with_the_daemon_during_and_after_an_apply(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    env = policy_env
    daemon = PolicyDaemon(env, broker, tmp_path / "t")
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text(f'[terminal]\nid = "BUS-P1"\ndata_dir = "{tmp_path / "t"}"\n',
                        encoding="utf-8")
    held: HeldRunner | None = None
    try:
        env.build(env.population_sources())
        publish_envelope(broker, env.repo.latest_envelope())
        daemon.wait_version(1)
        daemon.wait_state("applied")
        held = HeldRunner(daemon.applier.runner)
        daemon.applier.runner = held
        victim = env.pop.tagged("standard")[0]
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": victim.card_id}]),
                                merge=True))
        publish_envelope(broker, env.repo.latest_envelope())
        assert held.entered.wait(30), "the second apply never started"
        _, st = _status(cfg_file, capsys)
        own = daemon.status()
        assert st["policy_state"] == own["policy_state"] == "applying"
        assert st["policy"] == own["policy"] == "city/370302/bus@1"
        held.release.set()
        daemon.wait_version(2)
        daemon.wait_state("applied")
        _, st = _status(cfg_file, capsys)
        own = daemon.status()
        assert st["policy"] == own["policy"] == "city/370302/bus@2"
        assert st["policy_state"] == own["policy_state"] == "applied"
    finally:
        if held is not None:
            held.release.set()
        daemon.stop()


def test_sync_now_without_a_daemon_says_so(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text(f'[terminal]\nid = "BUS-X"\ndata_dir = "{tmp_path / "d"}"\n',
                        encoding="utf-8")
    assert main(["sync", "now", "--config", str(cfg_file)]) == 1
    assert "not running" in capsys.readouterr().err
