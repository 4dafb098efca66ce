"""Policy over the real transport: a Mosquitto broker carries the retained manifest, the
hub's HTTP server the large parts; a running engine changes its decisions."""

from __future__ import annotations

import hashlib
import os
from datetime import date
from pathlib import Path

from agent.model import Reason
from agent.policy.apply import SubprocessRunner
from agent.policy.manifest import PartRef
from agent.policy.wiring import engine_listener
from simulator.broker import Mosquitto
from simulator.population import Population
from sync.downlink import Downlink, HttpPartFetcher
from sync.hub.parts_http import PartServer
from sync.hub.policy import BundleSources
from sync.link import MqttSettings
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import PolicyEnv


def test_published_changes_reach_a_running_terminal(policy_env: PolicyEnv,
                                                    broker: Mosquitto) -> None:
    env = policy_env
    env.pop = Population.generate(3000, seed=11, today=date(2026, 11, 25))
    settings = MqttSettings(host=broker.host, port=broker.port)
    t = env.terminal(runner=SubprocessRunner())
    t.applier.add_listener(engine_listener(t.engine, "bus_validator"))
    fetcher = HttpPartFetcher(backoff_s=0.05)
    down = Downlink(t.applier, settings=settings, client_id="T1-policy", fetcher=fetcher,
                    retry_min_s=0.1)
    down.start()
    try:
        first = env.build(env.population_sources())
        assert any(not p.inline for p in first.parts)        # the snapshot goes over HTTP
        env.repo.publish(settings)
        wait_until(lambda: t.store.info.version == 1, 20, "policy v1 to be applied")
        assert fetcher.bytes_transferred > 0
        victim = env.pop.tagged("standard")[0]
        newcomer = env.pop.tagged("standard")[1]
        assert t.tap(victim).decision.product == "standard"
        assert t.tap(newcomer).decision.product == "standard"
        # ops: report the victim's card lost and grant the newcomer a disability pass
        env.build(BundleSources(
            hotlist=env.source("hot", [{"card_id": victim.card_id, "reason": "lost"}]),
            entitlements=env.source("ent", [{"ssn": newcomer.ssn, "name": "disabled"}]),
            merge=True))
        sent_before = env.server.bytes_sent
        env.repo.publish(settings)
        wait_until(lambda: t.store.info.version == 2, 20, "policy v2 to be applied")
        assert env.server.bytes_sent == sent_before     # the deltas came inline over MQTT
        env.clock.t += 300
        out = t.tap(victim)
        assert out.decision.reason is Reason.HOTLISTED
        assert out.record is not None and out.record.body["policy"] == "city/370302/bus@2"
        assert t.tap(newcomer).decision.product == "disabled_free"
        # the store switches inside the apply; the downlink says "applied" once it returns
        wait_until(lambda: down.status()["policy_state"] == "applied", 10, "state applied")
    finally:
        down.stop()


def test_a_refused_bundle_is_reported_and_the_old_policy_kept(policy_env: PolicyEnv,
                                                               broker: Mosquitto) -> None:
    env = policy_env
    settings = MqttSettings(host=broker.host, port=broker.port)
    t = env.terminal()
    down = Downlink(t.applier, settings=settings, client_id="T1-policy", retry_min_s=0.1)
    down.start()
    try:
        env.build(env.population_sources())
        env.repo.publish(settings)
        wait_until(lambda: t.store.info.version == 1, 20, "policy v1 to be applied")
        env.build(BundleSources(hotlist=env.source("hot", [{"card_id": "AB" * 16}]),
                                merge=True), now=env.clock() - 30 * 86400, expires_s=86400)
        env.repo.publish(settings)
        wait_until(lambda: down.status()["policy_refusal"] == "expired", 20,
                   "the expired bundle to be refused")
        assert t.store.info.version == 1
        assert t.tap(env.pop.tagged("standard")[0]).decision.accepted
    finally:
        down.stop()


def test_dropped_download_resumes_with_range(tmp_path: Path) -> None:
    """A 100 MB part, the connection cut at ~40 MB: the rest comes with Range."""
    size = 100 * 1024 * 1024
    part = tmp_path / "parts"
    part.mkdir()
    block = os.urandom(1024 * 1024)
    h = hashlib.sha256()
    tmp = part / "tmp"
    with open(tmp, "wb") as f:
        for i in range(100):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            h.update(chunk)
    sha = h.hexdigest()
    tmp.rename(part / sha)
    ref = PartRef(name="entitlements", kind="entitlements", mode="snapshot", sha256=sha,
                  size=size, rows=0, inline=False)
    with PartServer(part) as server:
        cut = 40 * 1024 * 1024
        server.drop_next(cut)
        fetcher = HttpPartFetcher(backoff_s=0.01)
        dest = tmp_path / "dl" / sha
        dest.parent.mkdir()
        fetcher.fetch(ref, server.url + sha, dest)
        assert dest.stat().st_size == size
        assert fetcher.resumes == 1
        # the second request asked only for what was missing; nothing was sent twice
        assert [r for _, r in server.requests] == ["", f"bytes={cut}-"]
        assert fetcher.bytes_transferred == size
        assert server.bytes_sent == size
