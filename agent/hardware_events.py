"""What a gate or a GPIO input reports, journaled: the daemon's decision worker hands each
hardware event here (in arrival order, between taps).

- a fire alarm (a GPIO input or a gate's alarm) opens every gate for evacuation and
  closes them after, and is journaled;
- an accepted entry nobody used (the gate timed out, was aborted or failed to open) is
  journaled as ``not_entered`` and gives its counters back (the day's entry, the time
  slot; never an issued queue number);
- a passage is journaled as ``passed`` (with ``ref_seq``, the accepted entry it used):
  visitor counts count these, not accepted decisions; gate state changes are journaled
  as ``gate_*``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.engine import Engine, Outcome
from agent.model import JournalRecord

if TYPE_CHECKING:
    from drivers.gate import Gate

__all__ = ["journal_hardware_event"]


def journal_hardware_event(engine: Engine, gates: Sequence[Gate],
                           recent: OrderedDict[int, Outcome], ev: Any) -> JournalRecord | None:
    """Journal ``ev`` (a ``GateEvent`` or a GPIO ``InputEvent``); ``recent`` maps the seq
    of each accepted entry at a gate to its outcome, for the give-back. Returns the record,
    or None when nothing was journaled (or the journal failed, logged by the engine)."""
    from drivers.gate import GateEventKind

    kind = getattr(ev, "kind", None)
    record: JournalRecord | None = None
    if kind is None:                                   # a GPIO InputEvent
        if ev.name == "fire_alarm":
            for g in gates:
                g.emergency(ev.active)
            record = engine.journal_event("fire_alarm", {"active": ev.active,
                                                         "input": "gpio"})
        elif ev.name == "tamper" and ev.active:
            record = engine.journal_event("tamper", {"input": "gpio"})
    elif kind in (GateEventKind.TIMED_OUT, GateEventKind.ABORTED,
                  GateEventKind.OPEN_FAILED) and ev.record_seq is not None:
        undo = recent.pop(ev.record_seq, None)
        record = engine.journal_event(
            "not_entered", {"gate": ev.gate, "detail": ev.detail[:80] or kind.value},
            undo=undo)
    elif kind is GateEventKind.PASSED:   # a person went through: the visitor count
        passed: dict[str, Any] = {"gate": ev.gate}
        if ev.record_seq is not None:
            recent.pop(ev.record_seq, None)
            passed["ref_seq"] = ev.record_seq
        if ev.direction:
            passed["direction"] = ev.direction
        record = engine.journal_event("passed", passed)
    elif kind is GateEventKind.ALARM:
        if ev.alarm == "fire" and ev.active is not None:
            for g in gates:     # every gate opens for evacuation, and closes after
                g.emergency(bool(ev.active))
        record = engine.journal_event("alarm", {"gate": ev.gate, "alarm": ev.alarm,
                                                "active": bool(ev.active)})
    elif kind in (GateEventKind.EMERGENCY, GateEventKind.OUT_OF_SERVICE,
                  GateEventKind.IN_SERVICE, GateEventKind.REBOOTED):
        fields: dict[str, Any] = {"gate": ev.gate}
        if ev.active is not None:
            fields["active"] = bool(ev.active)
        record = engine.journal_event(f"gate_{kind.value}", fields)
    return record
