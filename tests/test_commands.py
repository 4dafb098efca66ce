"""Hub commands (``docs/protocol.md`` §12) at the terminal: only what the hub signed, once.

Unit level over the real codec, keys and replay file; the same refusals on a running
daemon over a real broker are in ``tests/test_fleet_process.py``."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent.commands import (
    Command,
    CommandRefused,
    CommandResponder,
    ReplayMemory,
    encode_command,
    encode_result,
    parse_command,
    parse_result,
)
from agent.journal import Journal
from sync.hub.cmd import offset_from_round_trip

HUB_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
TERMINAL_KEY = ec.generate_private_key(ec.SECP256R1())


def cmd(n: int, op: str = "time", *, hub: str = "a" * 32, terminal: str = "BUS-1",
        args: dict[str, int] | None = None) -> Command:
    return Command(terminal, hub, n, secrets.token_hex(16), op, args)


def readings() -> dict[str, Any]:
    return {"time_us": 1_000_000, "wall_us": 1_000_000, "clock": "synced"}


def responder(tmp_path: Path, *, signed: bool = True) -> CommandResponder:
    """A responder whose replay memory is in a journal at ``tmp_path`` (reopened each
    time: a restarted daemon)."""
    journal = Journal(tmp_path / "journal.db", "BUS-1")
    return CommandResponder("BUS-1", readings,
                            hub_key=HUB_KEY.public_key() if signed else None,
                            key=TERMINAL_KEY if signed else None,
                            memory=ReplayMemory(journal))


def test_a_signed_command_is_answered_with_a_signed_result(tmp_path: Path) -> None:
    r = responder(tmp_path)
    c = cmd(1)
    out = r.handle(encode_command(HUB_KEY, c))
    assert out is not None
    msg = parse_result(out, TERMINAL_KEY.public_key())
    assert msg["id"] == c.id and msg["hub"] == c.hub and msg["time_us"] == 1_000_000
    with pytest.raises(CommandRefused) as err:
        parse_result(out, OTHER_KEY.public_key())      # not that terminal's signature
    assert err.value.kind == "forged_result"
    tampered = json.loads(out)
    tampered["time_us"] += 5_000_000
    with pytest.raises(CommandRefused):
        parse_result(json.dumps(tampered).encode(), TERMINAL_KEY.public_key())


def test_unsigned_forged_replayed_and_misaddressed_commands_are_refused(
        tmp_path: Path) -> None:
    r = responder(tmp_path)
    assert r.handle(encode_command(None, cmd(1))) is None              # unsigned (v1)
    assert r.handle(encode_command(OTHER_KEY, cmd(2))) is None         # forged
    good = encode_command(HUB_KEY, cmd(3))
    assert r.handle(good) is not None
    assert r.handle(good) is None                                      # replayed
    assert r.handle(encode_command(HUB_KEY, cmd(2))) is None           # an older one
    assert r.handle(encode_command(HUB_KEY, cmd(4, terminal="BUS-2"))) is None
    body = json.loads(encode_command(HUB_KEY, cmd(5)))
    body["op"] = "ping"                                                # altered after signing
    assert r.handle(json.dumps(body).encode()) is None
    assert r.stats == {"answered": 1, "unsigned_cmd": 1, "forged_cmd": 2, "replayed_cmd": 2,
                       "misaddressed_cmd": 1}
    # a restarted daemon remembers: the captured command stays refused
    again = responder(tmp_path)
    assert again.handle(good) is None and again.stats["replayed_cmd"] == 1
    # another hub instance (a new epoch) starts its own counter
    assert again.handle(encode_command(HUB_KEY, cmd(1, hub="b" * 32))) is not None


def test_without_the_hubs_key_unsigned_commands_that_change_no_decision(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = responder(tmp_path, signed=False)
    assert r.handle(encode_command(None, cmd(1, "ping"))) is not None
    clock = cmd(2, "clock", args={"offset_us": 5, "error_us": 1, "measured_ms": 7})
    assert r.handle(encode_command(None, clock)) is not None
    assert r.handle(encode_command(HUB_KEY, cmd(3))) is None    # cannot verify: refused
    assert r.stats["unverifiable_cmd"] == 1
    monkeypatch.setattr("agent.commands.UNSIGNED_OPS", ("ping", "time"))
    clock = cmd(4, "clock", args={"offset_us": 5, "error_us": 1, "measured_ms": 7})
    assert r.handle(encode_command(None, clock)) is None        # an op that needs v2
    assert r.stats["unsigned_cmd"] == 1


@pytest.mark.parametrize("payload", [
    b"", b"[]", b"{", b"\xff", b'{"v":2}', b"{" * 5000,
    json.dumps({"v": 2, "terminal": "BUS-1", "hub": "a" * 32, "n": 1.5, "id": "b" * 32,
                "op": "time", "sig": "AA"}).encode(),
    json.dumps({"v": 2, "terminal": "BUS-1", "hub": "a" * 32, "n": 1, "id": "b" * 32,
                "op": "reboot", "sig": "AA"}).encode(),
])
def test_malformed_commands_are_refused_without_raising(payload: bytes) -> None:
    with pytest.raises(CommandRefused):
        parse_command(payload, HUB_KEY.public_key(), "BUS-1")


def test_the_clock_command_is_kept_for_diag(tmp_path: Path) -> None:
    r = responder(tmp_path)
    assert r.clock()["offset_s"] is None
    c = cmd(1, "clock", args={"offset_us": -2_500_000, "error_us": 1500, "measured_ms": 9})
    assert r.handle(encode_command(HUB_KEY, c)) is not None
    got = r.clock()
    assert got["offset_s"] == -2.5 and got["error_s"] == 0.0015 and got["age_s"] is not None


def test_offset_from_the_round_trip() -> None:
    """The terminal read 100.3 while the hub's midpoint was 100.25: +0.05 s ± 0.25 s."""
    m = offset_from_round_trip(100.0, 0.5, 100.3)
    assert m.offset_us == 50_000 and m.error_us == 250_001 and m.rtt_us == 500_000
    assert m.measured_at == 100.25
    assert encode_result(None, cmd(1), {"ok": True}).startswith(b"{")


def test_the_documented_messages_have_the_fields_the_code_sends(tmp_path: Path) -> None:
    """``docs/protocol.md`` §12's examples: exactly the fields of a signed ``time``
    command and of a daemon's signed answer (the readings of
    :func:`sync.commands.terminal_responder`)."""
    import re

    from agent.config import AgentConfig
    from agent.daemon import Terminal
    from sync.commands import terminal_responder

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    section = doc[doc.index("## 12. Operations commands"):]
    cmd_doc, result_doc = (json.loads(b) for b in re.findall(r"```json\n(\{.*\})\n```",
                                                             section)[:2])
    sent = json.loads(encode_command(HUB_KEY, cmd(1)))
    assert set(cmd_doc) == set(sent)
    t = Terminal(AgentConfig.model_validate({
        "terminal": {"id": "BUS-1", "data_dir": str(tmp_path / "d"), "demo": True},
        "mqtt": {"enabled": False}}))
    t._sources_override = []          # no card reader: only the journal and the clock
    t.start()
    try:
        r = terminal_responder(t)
        r.hub_key, r.key = HUB_KEY.public_key(), TERMINAL_KEY
        answer = r.handle(encode_command(HUB_KEY, cmd(1)))
    finally:
        t.stop()
    assert answer is not None and set(result_doc) == set(json.loads(answer))
