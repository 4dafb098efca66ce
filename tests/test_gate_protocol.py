"""Gate protocol framing: CRC, escaping, partial frames, and the real controller on a pty."""

from __future__ import annotations

import time
from pathlib import Path

import serial
from hypothesis import given
from hypothesis import strategies as st

from drivers.gate.protocol import (
    CMD_OPEN,
    CMD_STATUS,
    EVT_BOOT,
    FLAG,
    RSP,
    Frame,
    FrameDecoder,
    GateStatus,
    crc16_ccitt_false,
    encode_frame,
)
from simulator.gate import GateControllerSim


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1


def test_worked_example_of_the_docs() -> None:
    # docs/gate-protocol.md: OPEN "in" for 5000 ms, token 0x0001, seq 1
    wire = encode_frame(1, CMD_OPEN, bytes.fromhex("0113880001"))
    assert wire.hex(" ") == "7e 01 01 03 05 01 13 88 00 01 87 f1 7e"


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=32))
def test_roundtrip_with_escaping(seq: int, ftype: int, payload: bytes) -> None:
    wire = encode_frame(seq, ftype, payload)
    assert FLAG not in wire[1:-1]
    assert FrameDecoder().feed(wire) == [Frame(seq, ftype, payload)]


@given(st.binary(max_size=64), st.integers(0, 255), st.binary(max_size=32))
def test_garbage_then_frame_still_decodes(junk: bytes, seq: int, payload: bytes) -> None:
    """Whatever came before (noise, a torn frame), the next whole frame decodes."""
    d = FrameDecoder()
    d.feed(junk)
    assert Frame(seq, 0x02, payload) in d.feed(encode_frame(seq, 0x02, payload))


def test_crc_error_and_partial_frame_are_dropped_and_counted() -> None:
    good = encode_frame(7, CMD_STATUS)
    bad = bytearray(good)
    bad[-2] ^= 0x01
    d = FrameDecoder()
    assert d.feed(bytes(bad)) == []
    assert d.crc_errors == 1
    assert d.feed(good[: len(good) // 2]) == []   # partial: waits
    assert d.feed(good) == [Frame(7, CMD_STATUS, b"")]  # the torn one is dropped at the flag
    assert d.bad_frames + d.crc_errors == 2


def _raw_request(port: serial.Serial, frame: bytes, timeout: float = 0.5) -> list[Frame]:
    """Write ``frame`` and collect response frames (not events) for ``timeout`` s."""
    d = FrameDecoder()
    port.write(frame)
    got: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += [f for f in d.feed(port.read(256)) if f.type & RSP and f.type < EVT_BOOT]
        if got:
            break
    return got


def test_controller_ignores_bad_crc_and_partial_frames(gate_controller: GateControllerSim) -> None:
    with serial.serial_for_url(gate_controller.port, timeout=0.05) as port:
        good = encode_frame(9, CMD_STATUS)
        corrupted = bytearray(good)
        corrupted[-3] ^= 0xFF
        assert _raw_request(port, bytes(corrupted), 0.3) == []           # no answer
        assert _raw_request(port, good[:5], 0.3) == []                    # torn: no answer yet
        answer = _raw_request(port, good)                                 # the next frame is fine
        assert [f.seq for f in answer] == [9]
        status = GateStatus.parse(answer[0].payload)
        assert status.crc_errors >= 1 and status.state == "closed"


def test_controller_rejects_malformed_commands(gate_controller: GateControllerSim) -> None:
    with serial.serial_for_url(gate_controller.port, timeout=0.05) as port:
        [rsp] = _raw_request(port, encode_frame(1, CMD_OPEN, b"\x01"))       # too short
        assert rsp.type == CMD_OPEN | RSP and rsp.payload[0] == 6
        [rsp] = _raw_request(port, encode_frame(2, CMD_OPEN, bytes.fromhex("0900c80001")))
        assert rsp.payload[0] == 3                                             # bad direction
        [rsp] = _raw_request(port, encode_frame(3, 0x42))
        assert rsp.type == 0xBF and list(rsp.payload) == [5, 0x42]             # unknown: NAK


def test_other_examples_of_the_docs() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "gate-protocol.md").read_text()
    for frame in (encode_frame(1, CMD_OPEN | RSP, bytes.fromhex("000001")),
                  encode_frame(5, 0xC1, bytes.fromhex("000101052b")),
                  encode_frame(0, 0x07, b"\x05"),
                  encode_frame(0x7E, CMD_STATUS)):
        assert frame.hex(" ").upper() in docs
