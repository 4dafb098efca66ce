"""Dynamic codes through the whole daemon: a serial scanner on a real pty → verifier →
engine → journal, with the trust file, the replay cache and the hotlist."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.daemon import Terminal
from agent.engine import Outcome
from agent.model import ClockQuality, Reason
from drivers.scanner import SerialScannerSource
from simulator.phone import Phone, SimIssuer
from simulator.population import Population
from tests.fixtures.hub import wait_until


class CodeRig:
    def __init__(self, tmp_path: Path, trust_doc: dict[str, object]) -> None:
        trust = tmp_path / "issuers.json"
        trust.write_text(json.dumps(trust_doc), encoding="utf-8")
        self.master, slave = os.openpty()
        self.slave = slave
        cfg = AgentConfig.model_validate({
            "terminal": {"id": "BUS-Q1", "data_dir": str(tmp_path / "d"), "demo": True},
            "location": {"route": "19", "vehicle": "V1"},
            "cards": {"enabled": False},
            "codes": {"enabled": True, "backend": "scanner", "trust_file": str(trust),
                      "options": {"url": os.ttyname(slave), "debounce_s": 0.0}},
            "mqtt": {"enabled": False},
        })
        # the terminal's clock is NTP-synchronised here: no extra allowance for clock error
        self.terminal = Terminal(cfg, clock_quality=lambda: ClockQuality.SYNCED)
        self.outcomes: list[Outcome] = []
        self.terminal.add_listener(self.outcomes.append)
        self.terminal.start()
        scanner = self.terminal.sources[0]
        assert isinstance(scanner, SerialScannerSource)
        # opening the pty flushes what was written before: scan only once it is open
        assert scanner.port_open.wait(5), "the scanner did not open its port"

    def scan(self, text: str) -> Outcome:
        n = len(self.outcomes)
        os.write(self.master, text.encode() + b"\r\n")
        wait_until(lambda: len(self.outcomes) > n, 10, "the code's decision")
        return self.outcomes[n]

    def close(self) -> None:
        self.terminal.stop()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def rig(tmp_path: Path, qr_trust_doc: dict[str, object]) -> Iterator[CodeRig]:
    r = CodeRig(tmp_path, qr_trust_doc)
    try:
        yield r
    finally:
        r.close()


def test_codes_decide_through_the_daemon(rig: CodeRig, qr_issuers: dict[str, SimIssuer]
                                         ) -> None:
    pseudo = rig.terminal.pseudonymizer
    pop = Population.generate(20, seed=9)
    elderly = next(h for h in pop if "elderly" in h.tags)
    lost = pop.tagged("standard")[0]
    issuer = next(iter(qr_issuers.values()))
    phone = Phone.enroll(issuer, holder_key=pseudo.holder_key(elderly.ssn),
                         birth_date=elderly.birth_date)
    code = phone.new_code()
    ok = rig.scan(code)
    assert ok.decision.accepted and ok.decision.product == "elderly_free", ok.decision
    assert ok.record is not None and ok.record.body["cred"]["kind"] == "qr:ykt1"
    assert code not in json.dumps(ok.record.body), "the code text must not be journaled"
    assert rig.scan(code).decision.reason is Reason.CODE_REPLAYED
    screenshot = phone.new_code(now=time.time() - 120)
    assert rig.scan(screenshot).decision.reason is Reason.CODE_EXPIRED
    assert rig.scan("YKT1:not-base45!").decision.reason is Reason.MALFORMED_CODE
    # a holder whose card was reported lost is refused by code as well (holder hotlist)
    lost_phone = Phone.enroll(issuer, holder_key=pseudo.holder_key(lost.ssn))
    assert rig.terminal.store is not None
    rig.terminal.store.apply(hotlist=[{"key": pseudo.holder_key(lost.ssn), "kind": "holder",
                                       "reason": "lost", "listed": ""}])
    assert rig.scan(lost_phone.new_code()).decision.reason is Reason.HOTLISTED
    j = rig.terminal.journal
    assert j is not None and j.last_seq == 5 and j.verify() == []


def test_a_code_accepted_before_a_restart_is_still_a_replay_after_it(
        tmp_path: Path, qr_trust_doc: dict[str, object],
        qr_issuers: dict[str, SimIssuer]) -> None:
    first = CodeRig(tmp_path, qr_trust_doc)
    try:
        pop = Population.generate(20, seed=9)
        elderly = next(h for h in pop if "elderly" in h.tags)
        phone = Phone.enroll(next(iter(qr_issuers.values())),
                             holder_key=first.terminal.pseudonymizer.holder_key(elderly.ssn),
                             birth_date=elderly.birth_date)
        code = phone.new_code()
        ok = first.scan(code)
        assert ok.decision.accepted and ok.record is not None
        cred = ok.record.body["cred"]
        assert len(cred["code"]) == 32 and cred["code_until_ms"] > 0
        assert code not in json.dumps(ok.record.body)
    finally:
        first.close()
    again = CodeRig(tmp_path, qr_trust_doc)      # the daemon restarted on the same journal
    try:
        assert again.scan(code).decision.reason is Reason.CODE_REPLAYED
        assert again.scan(phone.new_code()).decision.accepted   # the next code is fine
    finally:
        again.close()
