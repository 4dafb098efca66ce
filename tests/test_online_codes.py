"""Online-verified codes through the whole daemon against the simulator's real HTTPS
verification service (its own test CA, trusted through ``[[codes.online]] ca_file``):
ok, then down, slow (5 s) and answering garbage — each tap is decided by the profile's
offline fallback and journaled as such (``offline_fallback:<why>``). How long a tap takes
is the benchmark's business (``bench/bench_qr.py --online-only``), not this file's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.model import ClockQuality, Reason
from agent.tomlconf import ConfigFileError
from drivers.sim_codes import SimCodeSource
from simulator.code_service import CodeService, ServiceCA, make_service_ca
from simulator.population import Population
from tests.fixtures.hub import wait_until


@pytest.fixture
def service_ca(tmp_path: Path) -> ServiceCA:
    return make_service_ca(tmp_path / "essc")


@pytest.fixture
def service(service_ca: ServiceCA) -> Iterator[CodeService]:
    s = CodeService(service_ca, slow_s=5.0).start()
    try:
        yield s
    finally:
        s.stop()


class OnlineRig:
    """A daemon (bus profile) with the sim code source and one online scheme ``ESSC:``."""

    def __init__(self, tmp_path: Path, trust_doc: dict[str, object], service: CodeService,
                 ca_file: Path) -> None:
        trust = tmp_path / "issuers.json"
        trust.write_text(json.dumps(trust_doc), encoding="utf-8")
        cfg = AgentConfig.model_validate({
            "terminal": {"id": "BUS-O1", "data_dir": str(tmp_path / "d"), "demo": True},
            "location": {"route": "19", "vehicle": "V1"},
            "cards": {"enabled": False},
            "codes": {"enabled": True, "backend": "sim", "trust_file": str(trust),
                      "online": [{"prefixes": ["ESSC:"], "kind": "qr:essc",
                                  "url": service.url, "ca_file": str(ca_file),
                                  "timeout_ms": 300, "backoff_s": 0}]},
            "mqtt": {"enabled": False},
        })
        self.terminal = Terminal(cfg, clock_quality=lambda: ClockQuality.SYNCED)
        self.outcomes: list[Outcome] = []
        self.terminal.add_listener(self.outcomes.append)
        self.terminal.start()
        source = self.terminal.sources[0]
        assert isinstance(source, SimCodeSource)
        self.source = source

    def scan(self, text: str) -> Outcome:
        n = len(self.outcomes)
        self.source.show(text)
        wait_until(lambda: len(self.outcomes) > n, 30, "the code's decision")
        return self.outcomes[n]

    def close(self) -> None:
        self.terminal.stop()


@pytest.fixture
def rig(tmp_path: Path, qr_trust_doc: dict[str, object], service: CodeService,
        service_ca: ServiceCA) -> Iterator[OnlineRig]:
    r = OnlineRig(tmp_path, qr_trust_doc, service, service_ca.ca_cert)
    try:
        yield r
    finally:
        r.close()


def _fallback(out: Outcome, why: str) -> None:
    d = out.decision
    assert (d.accepted, d.reason) == (False, Reason.ONLINE_UNAVAILABLE), d
    assert d.prompt.text == "请出示实体卡"
    assert out.record is not None, "the fallback is journaled"
    body = out.record.body
    assert body["reason"] == "online_unavailable" and body["cred"]["kind"] == "qr:essc"
    assert body["detail"] == f"offline_fallback:{why}", body


def test_online_code_decided_by_the_fallback_when_the_service_fails(
        rig: OnlineRig, service: CodeService) -> None:
    pop = Population.generate(10, seed=4)
    elderly = next(h for h in pop if "elderly" in h.tags)
    rider = pop.tagged("standard")[0]
    ok = rig.scan(service.issue(elderly.ssn, birth_date=elderly.birth_date.isoformat()))
    assert ok.decision.accepted and ok.decision.product == "elderly_free", ok.decision
    assert ok.record is not None and ok.record.body["cred"]["auth"] == "online"
    holder = rig.terminal.pseudonymizer.holder_key(elderly.ssn)
    assert ok.record.body["cred"]["holder_key"] == holder
    assert elderly.ssn not in json.dumps(ok.record.body, ensure_ascii=False)
    assert rig.scan("ESSC:forged-token").decision.reason is Reason.BAD_SIGNATURE

    service.mode = "slow"                 # answers after 5 s: the tap does not wait
    _fallback(rig.scan(service.issue(rider.ssn)), "timeout")
    service.mode = "garbage"
    _fallback(rig.scan(service.issue(rider.ssn)), "garbage")
    service.stop()                        # down: connections refused
    _fallback(rig.scan("ESSC:any"), "down")
    # the YKT1 scheme and cards never depended on it; codes of unknown prefixes neither
    assert rig.scan("OTHER:1").decision.reason is Reason.UNSUPPORTED_CODE
    service.mode = "ok"
    service.start()
    assert rig.scan(service.issue(rider.ssn)).decision.accepted


def test_a_service_with_a_certificate_from_another_ca_is_down(
        tmp_path: Path, qr_trust_doc: dict[str, object], service: CodeService) -> None:
    other = make_service_ca(tmp_path / "other")        # the terminal trusts this CA only
    r = OnlineRig(tmp_path, qr_trust_doc, service, other.ca_cert)
    try:
        _fallback(r.scan(service.issue("37030219500101001X")), "down")
        assert service.requests == 0, "no request went to an untrusted service"
    finally:
        r.close()


@pytest.mark.parametrize("online, error", [
    ('prefixes = ["YKT1:"]', "claimed by qr:ykt1"),
    ('prefixes = ["ESSC:"]\nurl = "http://x/verify"', "url"),
    ('prefixes = ["ESSC:"]\nca_file = "/nonexistent/ca.pem"', "does not exist"),
    ('prefixes = ["ESSC:"]\ntimeout_ms = 5000', "timeout_ms"),
])
def test_online_schemes_are_validated_at_load(tmp_path: Path, service_ca: ServiceCA,
                                              online: str, error: str) -> None:
    trust = tmp_path / "issuers.json"
    trust.write_text("{}", encoding="utf-8")
    keys = {"kind": '"qr:essc"', "url": '"https://127.0.0.1:1/verify"',
            "ca_file": f'"{service_ca.ca_cert}"'}
    body = "\n".join(f"{k} = {v}" for k, v in keys.items() if f"{k} =" not in online)
    path = tmp_path / "agent.toml"
    path.write_text(f'[codes]\nenabled = true\ntrust_file = "{trust}"\n\n'
                    f"[[codes.online]]\n{online}\n{body}\n", encoding="utf-8")
    with pytest.raises(ConfigFileError, match=error):
        load_config(path)


def test_two_online_schemes_may_not_share_a_prefix(tmp_path: Path,
                                                   service_ca: ServiceCA) -> None:
    scheme = (f'prefixes = ["ESSC:"]\nurl = "https://127.0.0.1:1/v"\n'
              f'ca_file = "{service_ca.ca_cert}"')
    path = tmp_path / "agent.toml"
    path.write_text(f'[codes]\nenabled = true\ntrust_file = "{path}"\n\n'
                    f'[[codes.online]]\nkind = "qr:a"\n{scheme}\n\n'
                    f'[[codes.online]]\nkind = "qr:b"\n{scheme}\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match="claimed by qr:a and qr:b"):
        load_config(path)
