"""Passenger prompts: a display line, a beep pattern per outcome and an optional voice clip.

A :class:`~agent.model.Prompt` names what to show (``text``), the beep pattern (``sound``,
a key of :data:`BEEP_PATTERNS`) and a voice clip (``voice``, a key of :data:`VOICE_CLIPS`,
e.g. ``"elderly"`` → "老年卡", as Chinese buses announce concession cards).

Backends (registry kind ``prompt``):

* ``sim`` — records every prompt in :attr:`SimPrompter.history` (display line as fitted
  to the display, pattern, voice clip) so tests assert what a passenger saw and heard;
* ``log`` — like ``sim`` and logs each prompt (headless terminals, the demo);
* ``gpio`` — like ``sim`` and plays the pattern on a GPIO buzzer (:mod:`drivers.gpio`),
  with an optional ``voice_player`` callable for the clips.

Every backend speaks through the ``player`` option (:mod:`drivers.voice`): ``none``
(default), ``sim`` (records the clips played) or ``alsa`` (``aplay`` on ``alsa_device``;
clips generated with espeak-ng on first use into ``voice_dir``). ``large_text = true``
shows each prompt's short form with half the columns (big characters).

The beep pattern of a decision comes from its prompt; a denial whose prompt still says
``"ok"`` (the default) gets its outcome's pattern from :data:`SOUND_FOR_REASON` instead,
so a denied passenger never hears the accept beep.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.model import Decision, JournalRecord, Prompt, Reason
from drivers.base import Actuator
from drivers.exceptions import ConfigError
from drivers.options import (
    BuzzerPromptOptions,
    DriverOptions,
    GpioBoardOptions,
    PromptOptions,
    expect,
)
from drivers.voice import SPOKEN_CLIPS, VoicePlay, VoicePlayer, make_player

__all__ = ["BEEP_PATTERNS", "SOUND_FOR_REASON", "VOICE_CLIPS", "BuzzerPrompter", "LogPrompter",
           "PromptEvent", "SimPrompter", "VoiceClip", "display_width", "fit_display"]

log = logging.getLogger(__name__)

#: beep pattern name → (on ms, off ms, on ms, …)
BEEP_PATTERNS: dict[str, tuple[int, ...]] = {
    "ok": (80,),
    "ok_concession": (80, 60, 80),
    "ok_free": (80, 60, 80, 60, 80),
    "deny": (400,),
    "deny_hotlist": (400, 100, 400, 100, 400),
    "retry": (60, 60, 60),
    "ticket": (80, 80, 200),
    "error": (150, 80, 150, 80, 150),
    "out_of_service": (600, 200, 600),
    "none": (),
}

#: the pattern for a decision whose prompt does not choose one (accepted → "ok")
SOUND_FOR_REASON: dict[Reason, str] = {
    Reason.ACCEPTED: "ok",
    Reason.ALREADY_PAID: "ok",
    Reason.HOTLISTED: "deny_hotlist",
    Reason.MULTIPLE_CARDS: "retry",
    Reason.CARD_REMOVED: "retry",
    Reason.READ_ERROR: "retry",
    Reason.GATE_OUT_OF_SERVICE: "out_of_service",
    Reason.INTERNAL_ERROR: "error",
}


@dataclass(frozen=True, slots=True)
class VoiceClip:
    """A voice clip: what it says (``text``) and its file name under the voice directory."""

    text: str
    file: str


#: voice clip name → clip (:data:`drivers.voice.SPOKEN_CLIPS`); options may add clips
VOICE_CLIPS: dict[str, VoiceClip] = {k: VoiceClip(t, f"{k}.wav") for k, t in SPOKEN_CLIPS.items()}


def display_width(text: str) -> int:
    """Columns ``text`` takes on a character display: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit_display(text: str, columns: int) -> str:
    """``text`` on one line of ``columns`` columns, cut with "…" when it does not fit."""
    line = " ".join(text.split())
    if display_width(line) <= columns:
        return line
    out, width = "", 0
    for c in line:
        w = display_width(c)
        if width + w > columns - 1:
            break
        out, width = out + c, width + w
    return out + "…"


@dataclass(frozen=True, slots=True)
class PromptEvent:
    """One prompt as shown/played, with ``at_ns`` = ``time.monotonic_ns()``.

    ``display`` is the line as fitted to the display; ``voice_text`` and ``clip`` (a path,
    "" if none) describe the voice clip played, if any.
    """

    at_ns: int
    text: str
    sound: str
    voice: str
    pattern: tuple[int, ...]
    display: str = ""
    voice_text: str = ""
    clip: str = ""
    played: VoicePlay | None = None


def _prompt_kwargs(o: PromptOptions) -> dict[str, Any]:
    """The :class:`SimPrompter` keyword arguments of validated prompt options."""
    return {"display_columns": o.display_columns, "voice_dir": o.voice_dir,
            "voices": {k: v if isinstance(v, str) else v.model_dump(exclude_none=True)
                       for k, v in o.voices.items()},
            "patterns": o.patterns, "sounds": {str(k): v for k, v in o.sounds.items()},
            "large_text": o.large_text, "player": o.player, "alsa_device": o.alsa_device}


class SimPrompter(Actuator):
    """Records prompts in :attr:`history` instead of driving a display and a buzzer.

    Options (profile ``[prompt]`` keys): ``display_columns`` (default 20), ``voice_dir``
    (where clip files live), ``voices`` ({name: text or {text, file}}), ``patterns``
    ({name: [ms, …]}), ``sounds`` ({reason: pattern name}). Raises :class:`ConfigError`
    for malformed options.
    """

    name = "prompt:sim"

    def __init__(self, *, display_columns: int = 20, voice_dir: str | Path | None = None,
                 voices: Mapping[str, Any] | None = None,
                 patterns: Mapping[str, Any] | None = None,
                 sounds: Mapping[str, str] | None = None, large_text: bool = False,
                 player: str | VoicePlayer = "none", alsa_device: str = "default",
                 **unknown: object) -> None:
        if unknown:
            raise ConfigError(f"prompt: unknown options: {', '.join(sorted(unknown))}")
        if display_columns < 4:
            raise ConfigError(f"prompt display_columns must be >= 4, got {display_columns}")
        self.display_columns = display_columns
        self.voice_dir = Path(voice_dir) if voice_dir else None
        self.patterns = dict(BEEP_PATTERNS)
        self.voices = dict(VOICE_CLIPS)
        self.sounds = dict(SOUND_FOR_REASON)
        try:
            for k, v in (patterns or {}).items():
                self.patterns[k] = tuple(int(ms) for ms in v)
            for k, v in (voices or {}).items():
                self.voices[k] = (VoiceClip(v, f"{k}.wav") if isinstance(v, str)
                                  else VoiceClip(str(v["text"]), str(v.get("file", f"{k}.wav"))))
            for k, v in (sounds or {}).items():
                if v not in self.patterns:
                    raise ConfigError(f"prompt sounds.{k}: unknown beep pattern {v!r}")
                self.sounds[Reason(k)] = v
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"prompt options: {err}") from err
        self.large_text = large_text
        self.player = player if isinstance(player, VoicePlayer) else make_player(
            player, self.voice_dir, device=alsa_device,
            texts={k: c.text for k, c in self.voices.items()})
        self.history: list[PromptEvent] = []
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, options: DriverOptions) -> SimPrompter:
        return cls(**_prompt_kwargs(expect(options, PromptOptions)))

    def act(self, decision: Decision, record: JournalRecord | None) -> None:
        self.show(self.prompt_for(decision))

    def failsafe(self, prompt: Prompt) -> None:
        self.show(prompt)

    def prompt_for(self, decision: Decision) -> Prompt:
        """The decision's prompt, with the outcome's beep pattern if it did not choose one."""
        p = decision.prompt
        if not decision.accepted and p.sound in ("", "ok"):
            return Prompt(p.text, self.sounds.get(decision.reason, "deny"), p.voice, p.short)
        if not p.sound:
            return Prompt(p.text, self.sounds.get(decision.reason, "ok"), p.voice, p.short)
        return p

    def show(self, prompt: Prompt) -> PromptEvent:
        """Show/play ``prompt`` now. Unknown patterns play as "error", unknown voices are skipped
        (both logged). Returns the recorded event."""
        pattern = self.patterns.get(prompt.sound)
        if pattern is None:
            log.warning("unknown beep pattern %r", prompt.sound)
            pattern = self.patterns["error"]
        played = self.player.play(prompt.voice) if self.player and prompt.voice else None
        number = prompt.voice.startswith("number:")
        clip = self.voices.get(prompt.voice) if prompt.voice and not number else None
        if prompt.voice and clip is None and not number:
            log.warning("unknown voice clip %r", prompt.voice)
        path = ""
        if clip is not None:
            path = str(self.voice_dir / clip.file) if self.voice_dir else clip.file
        said = f"{prompt.voice[len('number:'):]}号" if number else (clip.text if clip else "")
        if self.large_text:
            display = fit_display(prompt.short or prompt.text, self.display_columns // 2)
        else:
            display = fit_display(prompt.text, self.display_columns)
        event = PromptEvent(time.monotonic_ns(), prompt.text, prompt.sound, prompt.voice, pattern,
                            display, said, path, played)
        with self._lock:
            self.history.append(event)
        self._output(event)
        return event

    def _output(self, event: PromptEvent) -> None:
        """Backend primitive: drive the display and buzzer (sim: nothing)."""

    def close(self) -> None:
        if self.player is not None:
            self.player.close()

    @property
    def last(self) -> PromptEvent | None:
        with self._lock:
            return self.history[-1] if self.history else None


class LogPrompter(SimPrompter):
    """Like ``sim``, and also logs each prompt (for headless terminals and the demo)."""

    name = "prompt:log"

    def _output(self, event: PromptEvent) -> None:
        log.info("prompt %s [%s%s]", event.display, event.sound,
                 f", voice {event.voice_text}" if event.voice_text else "")


class BuzzerPrompter(SimPrompter):
    """``gpio`` backend: records like ``sim`` and plays each beep pattern on a GPIO buzzer.

    Give either ``board`` (a :class:`drivers.gpio.GpioBoard` with a buzzer named
    ``buzzer``) or ``gpio`` (a ``[gpio]`` table to build one; then this prompter owns and
    closes it). ``voice_player(path)`` plays a clip file (errors are logged, never raised).
    """

    name = "prompt:gpio"

    def __init__(self, *, board: Any = None,
                 gpio: Mapping[str, Any] | GpioBoardOptions | None = None,
                 buzzer: str = "main", scheduler: Any = None,
                 voice_player: Callable[[str], None] | None = None, **options: Any) -> None:
        super().__init__(**options)
        from drivers.gpio import GpioBoard

        if board is None:
            if gpio is None:
                raise ConfigError("prompt backend 'gpio' needs a gpio board or a [gpio] table")
            board = GpioBoard(gpio, scheduler=scheduler)
            self._owns_board = True
        else:
            self._owns_board = False
        self.board = board
        self.buzzer = board.buzzer(buzzer)
        self.voice_player = voice_player

    @classmethod
    def from_options(cls, options: DriverOptions) -> BuzzerPrompter:
        o = expect(options, BuzzerPromptOptions)
        return cls(gpio=o.gpio, buzzer=o.buzzer, **_prompt_kwargs(o))

    def _output(self, event: PromptEvent) -> None:
        self.buzzer.play(event.pattern)
        if event.clip and self.voice_player is not None:
            try:
                self.voice_player(event.clip)
            except Exception:
                log.exception("playing voice clip %s failed", event.clip)

    def close(self) -> None:
        super().close()
        if self._owns_board:
            self.board.close()
            self._owns_board = False
