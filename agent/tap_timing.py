"""Taps that took longer than the profile's budget: journaled, counted, reported.

A rider notices a slow validator before anyone else does. :class:`TapTimer` measures each
decided presentation from the moment the hardware reported it (``Presentation.seen_ns``,
monotonic) to its durable journal record — the time the rider waits before the gate, the
buzzer or the display may act — against the profile's ``tap_budget_ms``
(``[profile]`` in ``profiles/*.toml``: 300 ms for a bus validator, after Beijing's
300 ms transaction rule). A tap over budget is journaled *after* the actuators ran (an
event ``slow_tap`` with ``tap_seq``, ``duration_ms`` and ``budget_ms``, so the extra
write never delays the rider it is about) and counted: ``slow_taps`` and
``tap_budget_ms`` travel in the status heartbeat (``docs/protocol.md`` §7) and show in
``ykt status``. A presentation without a hardware time stamp (``seen_ns`` 0) is not
timed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.engine import Engine, Outcome
    from agent.model import Presentation

__all__ = ["TapTimer"]

log = logging.getLogger(__name__)


class TapTimer:
    """Times taps against ``budget_ms`` (milliseconds); ``mono_ns`` is the clock
    ``seen_ns`` was taken with (``time.monotonic_ns``)."""

    def __init__(self, budget_ms: int, mono_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.budget_ms = budget_ms
        self.mono_ns = mono_ns
        self.slow_taps = 0
        """Taps over budget since the daemon started."""
        self.longest_ms = 0
        """The longest timed tap since the daemon started (ms)."""

    def took_ms(self, p: Presentation) -> int | None:
        """Milliseconds from ``p.seen_ns`` until now (call it right after the decision
        was journaled); None when ``p`` carries no hardware time stamp."""
        if p.seen_ns <= 0:
            return None
        ms = max(0, (self.mono_ns() - p.seen_ns) // 1_000_000)
        self.longest_ms = max(self.longest_ms, ms)
        return ms

    def observe(self, engine: Engine, outcome: Outcome, took_ms: int | None) -> bool:
        """Count and journal (event ``slow_tap``) a journaled tap that took longer than
        the budget; True if it did. Never raises (a failed journal write is the engine's
        to report)."""
        if took_ms is None or took_ms <= self.budget_ms or outcome.record is None:
            return False
        self.slow_taps += 1
        log.warning("tap #%d took %d ms (budget %d ms)", outcome.record.seq, took_ms,
                    self.budget_ms)
        engine.journal_event("slow_tap", {"tap_seq": outcome.record.seq,
                                          "duration_ms": took_ms, "budget_ms": self.budget_ms})
        return True

    def status(self) -> dict[str, int]:
        """The status heartbeat's fields: ``slow_taps``, ``tap_budget_ms``,
        ``longest_tap_ms``."""
        return {"slow_taps": self.slow_taps, "tap_budget_ms": self.budget_ms,
                "longest_tap_ms": self.longest_ms}
