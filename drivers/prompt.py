"""Passenger prompts: a display line, a beep pattern and an optional voice clip.

Backends: ``sim`` records everything shown and played (with monotonic timestamps) so tests
can assert what a passenger saw and heard; ``log`` writes prompts to the log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from agent.model import Decision, JournalRecord, Prompt
from drivers.base import Actuator

__all__ = ["BEEP_PATTERNS", "LogPrompter", "PromptEvent", "SimPrompter"]

log = logging.getLogger(__name__)

#: beep pattern name → (on ms, off ms, …)
BEEP_PATTERNS: dict[str, tuple[int, ...]] = {
    "ok": (80,),
    "ok_concession": (80, 60, 80),
    "deny": (400,),
    "error": (150, 80, 150, 80, 150),
    "none": (),
}


@dataclass(frozen=True, slots=True)
class PromptEvent:
    """One prompt as shown/played, with ``at_ns`` = ``time.monotonic_ns()``."""

    at_ns: int
    text: str
    sound: str
    voice: str
    pattern: tuple[int, ...]


class SimPrompter(Actuator):
    """Records prompts in :attr:`history` instead of driving a display and a buzzer."""

    name = "prompt:sim"

    def __init__(self, **_: object) -> None:
        self.history: list[PromptEvent] = []
        self._lock = threading.Lock()

    def act(self, decision: Decision, record: JournalRecord | None) -> None:
        self.show(decision.prompt)

    def show(self, prompt: Prompt) -> None:
        """Show/play ``prompt`` now. Unknown beep patterns are logged and played as "error"."""
        pattern = BEEP_PATTERNS.get(prompt.sound)
        if pattern is None:
            log.warning("unknown beep pattern %r", prompt.sound)
            pattern = BEEP_PATTERNS["error"]
        with self._lock:
            self.history.append(PromptEvent(time.monotonic_ns(), prompt.text, prompt.sound,
                                            prompt.voice, pattern))


class LogPrompter(SimPrompter):
    """Like ``sim``, and also logs each prompt (for headless terminals and the demo)."""

    name = "prompt:log"

    def show(self, prompt: Prompt) -> None:
        super().show(prompt)
        log.info("prompt %s [%s%s]", prompt.text, prompt.sound,
                 f", voice {prompt.voice}" if prompt.voice else "")
