"""SerialGate and GateActuator against the real host-built controller on a real pty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.model import Decision, JournalRecord, Prompt, Reason
from drivers.exceptions import ConfigError, GateError
from drivers.gate import GateActuator, GateEventKind, SerialGate
from drivers.options import GateOptions, SerialGateOptions
from simulator.gate import GateControllerSim
from tests.fixtures.gate import FAST, GateEventLog
from tests.fixtures.hub import wait_until

K = GateEventKind
ACCEPT = Decision(True, Reason.ACCEPTED, product="entry", amount_cents=500,
                  prompt=Prompt("欢迎光临"), counters=("day:entry",))


def record(seq: int) -> JournalRecord:
    return JournalRecord(seq=seq, body={"terminal": "t1"}, hash="0" * 64)


@pytest.fixture
def quiet_gate(gate_controller: GateControllerSim,
               gate_events: GateEventLog) -> Iterator[SerialGate]:
    """Like ``serial_gate`` but without heartbeats, so the test alone decides what the
    controller sends next (a line fault then hits the frame the test means)."""
    gate = SerialGate(gate_controller.port, name="quiet-gate", **{**FAST, "heartbeat_s": 3600})
    gate.subscribe(gate_events)
    try:
        assert gate.wait_ready(5.0), "gate controller never answered"
        wait_until(lambda: gate.status().pending_events == 0, 5,
                   "the controller to have its BOOT event acknowledged")
        yield gate
    finally:
        gate.close()


def test_open_then_passage(serial_gate: SerialGate, gate_controller: GateControllerSim,
                           gate_events: GateEventLog) -> None:
    token = serial_gate.open("in", 5000, record_seq=41)
    assert gate_events.wait_for(K.OPENED).record_seq == 41
    assert gate_controller.wait_barrier("open_in")
    status = serial_gate.status()
    assert (status.state, status.direction, status.token) == ("open", 1, token)
    gate_controller.pass_through("in")
    passed = gate_events.wait_for(K.PASSED)
    assert (passed.record_seq, passed.token, passed.direction) == (41, token, "in")
    assert gate_controller.wait_barrier("closed")
    assert [s for _, s in gate_controller.barrier_history][-2:] == ["open_in", "closed"]
    kinds = gate_events.kinds()
    assert kinds.index(K.OPENED) < kinds.index(K.PASSED)   # both reported in wire order


def test_open_times_out_without_passage(serial_gate: SerialGate, gate_events: GateEventLog,
                                        gate_controller: GateControllerSim) -> None:
    serial_gate.open("out", 200, record_seq=7)
    ended = gate_events.wait_for(K.TIMED_OUT)
    assert (ended.record_seq, ended.direction, ended.detail) == (7, "out", "no passage")
    assert gate_controller.wait_barrier("closed")
    assert K.PASSED not in gate_events.kinds()


def test_busy_gate_refuses_a_second_open(serial_gate: SerialGate) -> None:
    serial_gate.open("in", 5000)
    with pytest.raises(GateError, match="busy"):
        serial_gate.open("in", 5000)
    serial_gate.close_barrier()


def test_bad_arguments_are_config_errors(serial_gate: SerialGate) -> None:
    with pytest.raises(ConfigError):
        serial_gate.open("sideways", 1000)
    with pytest.raises(ConfigError):
        serial_gate.open("in", 99_999)


def test_crc_errors_from_the_controller_are_retried(serial_gate: SerialGate,
                                                     gate_controller: GateControllerSim) -> None:
    before = serial_gate.line_errors[0]
    gate_controller.garble(2)
    assert serial_gate.status().state == "closed"       # retried until a good answer
    assert serial_gate.line_errors[0] >= before + 1
    assert serial_gate.in_service


def test_partial_frames_and_noise_from_the_controller(serial_gate: SerialGate,
                                                      gate_controller: GateControllerSim) -> None:
    gate_controller.truncate(1)
    gate_controller.noise()
    token = serial_gate.open("in", 3000)
    assert serial_gate.status().token == token
    assert sum(serial_gate.line_errors) >= 1
    assert serial_gate.in_service


def test_garbled_event_is_retransmitted(quiet_gate: SerialGate,
                                        gate_controller: GateControllerSim,
                                        gate_events: GateEventLog) -> None:
    quiet_gate.open("in", 5000, record_seq=3)
    before = quiet_gate.line_errors[0]
    gate_controller.garble(1)            # the PASSAGE event's first transmission is corrupt
    gate_controller.pass_through("in")
    assert gate_events.wait_for(K.PASSED).record_seq == 3
    assert quiet_gate.line_errors[0] == before + 1
    assert gate_events.kinds().count(K.PASSED) == 1


def test_event_whose_acks_are_lost_is_delivered_once(quiet_gate: SerialGate,
                                                     gate_controller: GateControllerSim,
                                                     gate_events: GateEventLog) -> None:
    quiet_gate.open("in", 5000, record_seq=4)
    gate_controller.deaf(True)           # the host's EVENT_ACKs are lost from here on
    gate_controller.pass_through("in")
    assert gate_events.wait_for(K.PASSED).record_seq == 4
    # it never hears an ack, so it re-sends: wait until two copies were received and dropped
    wait_until(lambda: quiet_gate.repeated_events >= 2, 5, "two retransmissions of PASSAGE")
    gate_controller.deaf(False)
    wait_until(lambda: quiet_gate.status().pending_events == 0, 5,
               "the controller to hear an acknowledgement")
    assert gate_events.kinds().count(K.PASSED) == 1    # decoded 3+ times, delivered once


@pytest.mark.parametrize("silence", ["freeze", "mute", "kill"])
def test_controller_that_stops_answering_is_out_of_service(
        silence: str, gate_controller: GateControllerSim, gate_events: GateEventLog) -> None:
    gate = SerialGate(gate_controller.port, **FAST)  # type: ignore[arg-type]
    gate.subscribe(gate_events)
    actuator = GateActuator(gate, direction="in", open_ms=5000, owns_gate=True)
    try:
        assert gate.wait_ready()
        assert actuator.available     # what the engine's gate_ok reads (Terminal)
        gate.open("in", 5000, record_seq=11)
        {"freeze": gate_controller.freeze, "kill": gate_controller.kill,
         "mute": lambda: gate_controller.mute(True)}[silence]()
        gate_events.wait_for(K.OUT_OF_SERVICE, timeout=10)
        assert gate_events.wait_for(K.ABORTED).record_seq == 11
        assert not gate.in_service and not actuator.available
        with pytest.raises(GateError, match="did not answer"):
            gate.open("in", 1000)
        mark = gate_events.mark()
        if silence == "freeze":
            gate_controller.thaw()
        elif silence == "mute":
            gate_controller.mute(False)
        else:
            gate_controller.power_cycle()
        gate_events.wait_for(K.IN_SERVICE, after=mark, timeout=10)
        assert actuator.available
    finally:
        actuator.close()


@pytest.mark.parametrize("how", ["power_cycle", "reset", "command"])
def test_controller_reboot_mid_session(how: str, serial_gate: SerialGate,
                                       gate_controller: GateControllerSim,
                                       gate_events: GateEventLog) -> None:
    boots = len(gate_controller.boot_ids)
    serial_gate.open("in", 10_000, record_seq=5)
    if how == "power_cycle":
        gate_controller.power_cycle()
    elif how == "reset":
        gate_controller.reset()
    else:
        serial_gate.reboot()
        gate_controller.wait_boots(boots + 1)
    gate_events.wait_for(K.REBOOTED)
    aborted = gate_events.wait_for(K.ABORTED)
    assert aborted.record_seq == 5 and aborted.detail == "controller rebooted"
    assert gate_controller.wait_barrier("closed")
    # the session goes on: the same driver opens the rebooted controller
    serial_gate.open("in", 5000, record_seq=6)
    gate_controller.pass_through("in")
    assert gate_events.wait_for(K.PASSED).record_seq == 6
    assert serial_gate.status().boot_id == gate_controller.boot_ids[-1]
    assert serial_gate.last_status is not None
    assert gate_events.kinds().count(K.REBOOTED) == 1


def test_fire_alarm_opens_the_gate_and_blocks_fares(serial_gate: SerialGate,
                                                     gate_controller: GateControllerSim,
                                                     gate_events: GateEventLog) -> None:
    serial_gate.open("in", 5000, record_seq=9)
    gate_controller.fire_alarm(True)
    alarm = gate_events.wait_for(K.ALARM, where=lambda e: e.alarm == "fire")
    assert alarm.active is True
    emergency = gate_events.wait_for(K.EMERGENCY)
    assert emergency.active is True and emergency.detail == "fire"
    ended = gate_events.wait_for(K.TIMED_OUT)
    assert (ended.record_seq, ended.detail) == (9, "emergency")
    assert gate_controller.wait_barrier("open_both")
    assert serial_gate.in_service and not serial_gate.available
    with pytest.raises(GateError, match="emergency"):
        serial_gate.open("in", 1000)
    mark = gate_events.mark()
    gate_controller.fire_alarm(False)
    assert gate_events.wait_for(K.EMERGENCY, after=mark).active is False
    assert gate_controller.wait_barrier("closed")
    assert serial_gate.available


def test_host_commanded_emergency(serial_gate: SerialGate, gate_controller: GateControllerSim,
                                  gate_events: GateEventLog) -> None:
    serial_gate.emergency(True)
    assert gate_events.wait_for(K.EMERGENCY).detail == "host"
    assert gate_controller.wait_barrier("open_both")
    assert serial_gate.status().host_emergency
    serial_gate.emergency(False)
    assert gate_controller.wait_barrier("closed")


def test_forced_passage_and_tamper_alarms(serial_gate: SerialGate,
                                          gate_controller: GateControllerSim,
                                          gate_events: GateEventLog) -> None:
    gate_controller.pass_through("out")
    forced = gate_events.wait_for(K.ALARM, where=lambda e: e.alarm == "forced")
    assert forced.direction == "out"
    gate_controller.tamper(True)
    assert gate_events.wait_for(K.ALARM, where=lambda e: e.alarm == "tamper").active is True
    assert serial_gate.status().tamper


def test_actuator_opens_on_accepted_decisions_only(serial_gate: SerialGate,
                                                   gate_controller: GateControllerSim,
                                                   gate_events: GateEventLog) -> None:
    actuator = GateActuator(serial_gate, direction="in", open_ms=4000)
    try:
        actuator.act(Decision(False, Reason.PASSBACK), record(1))
        actuator.act(ACCEPT, record(2))
        opened = gate_events.wait_for(K.OPENED)
        assert opened.record_seq == 2 and opened.direction == "in"
        actuator.act(ACCEPT, record(3))               # the gate is still open: refused
        failed = gate_events.wait_for(K.OPEN_FAILED)
        assert failed.record_seq == 3 and "busy" in failed.detail
        assert gate_events.kinds().count(K.OPENED) == 1
    finally:
        actuator.close()
        actuator.close()


def test_actuator_from_options_with_the_sim_backend(gate_events: GateEventLog) -> None:
    actuator = GateActuator.from_backend("sim", GateOptions(direction="out", open_ms=300,
                                                            **FAST))  # type: ignore[arg-type]
    try:
        actuator.subscribe(gate_events)
        assert actuator.available
        actuator.act(ACCEPT, record(8))
        assert gate_events.wait_for(K.TIMED_OUT).record_seq == 8
    finally:
        actuator.close()
    with pytest.raises(ConfigError, match="url"):     # a serial gate's options: no line here
        GateActuator.from_backend("sim", SerialGateOptions(url="/dev/ttyUSB0"))


def test_unopenable_port_raises_gate_error() -> None:
    with pytest.raises(GateError, match="cannot open"):
        SerialGate("/dev/nonexistent-gate", **FAST)  # type: ignore[arg-type]
