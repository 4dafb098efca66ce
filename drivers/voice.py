"""Voice: the announcements real validators make (老年卡, 爱心卡, 请重刷 …) as real audio.

Clips are WAV files generated with Debian's espeak-ng Mandarin voice (``espeak-ng -v
cmn``) by :func:`build_voices` — at build/install time (``make voices``, ``ykt voices
build``) or on first use into a cache directory (:func:`default_voice_dir`) — and played
through ALSA (``aplay``). A prompt's ``voice`` names a clip (``"elderly"``) or a number to
read aloud (``"number:A001"`` → the clips ``A``, ``0``, ``0``, ``1``, ``号``, i.e.
"A零零一号", as hall kiosks call numbers).

Players (the prompt driver's ``player`` option):

* ``sim`` — :class:`SimVoice` records every playback (clip names and files) in
  :attr:`SimVoice.played`, so tests assert what a rider heard;
* ``alsa`` — :class:`AlsaVoice` starts ``aplay -q -D DEVICE FILE…`` and returns at once;
  a new announcement cuts the one still playing (the rider has moved on). ``device`` is
  an ALSA PCM name (``default``, ``plughw:0``; ``null`` plays into nothing, for tests
  and benchmarks).

Neither blocks the tap: :meth:`VoicePlayer.play` starts playback and returns. The
budget — first audio sample within 100 ms of the decision — is measured by
``bench/bench_voice.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from drivers.exceptions import ConfigError

__all__ = ["NUMBER_CLIPS", "SPOKEN_CLIPS", "AlsaVoice", "SimVoice", "VoicePlay", "VoicePlayer",
           "build_voices", "clip_names", "default_voice_dir", "make_player"]

log = logging.getLogger(__name__)

#: clip name → what it says (Mandarin): categories, refusals, guidance
SPOKEN_CLIPS: dict[str, str] = {
    "elderly": "老年卡",
    "student": "学生卡",
    "disabled": "爱心卡",
    "preferential": "优待卡",
    "welcome": "欢迎光临",
    "thanks": "谢谢",
    "invalid": "无效卡",
    "hotlisted": "已挂失",
    "single_card": "请单张刷卡",
    "tap_again": "请重刷",
    "refresh_code": "请刷新",
    "gate_out_of_service": "闸机故障 请走人工通道",
    "queue_number": "请取号",
}

_DIGITS = "零一二三四五六七八九"
#: clips for reading numbers aloud: digits, series letters and "号"
NUMBER_CLIPS: dict[str, str] = {
    **{f"digit_{d}": _DIGITS[d] for d in range(10)},
    **{f"letter_{c.lower()}": c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    "hao": "号",
}

_ESPEAK_ARGS = ("-v", "cmn", "-s", "160")


def default_voice_dir() -> Path:
    """Where generated clips are cached: ``$YKT_VOICE_DIR``, else
    ``$XDG_CACHE_HOME/ykt/voices`` (``~/.cache/ykt/voices``)."""
    if os.environ.get("YKT_VOICE_DIR"):
        return Path(os.environ["YKT_VOICE_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ykt" / "voices"


def clip_names(voice: str) -> tuple[str, ...]:
    """The clips that say ``voice``: ``"elderly"`` → ``("elderly",)``; ``"number:A001"`` →
    ``("letter_a", "digit_0", "digit_0", "digit_1", "hao")``. Raises ``ValueError`` for
    a number with characters that cannot be read aloud."""
    if not voice.startswith("number:"):
        return (voice,)
    names = []
    for c in voice[len("number:"):]:
        if c.isdigit():
            names.append(f"digit_{c}")
        elif c.isascii() and c.isalpha():
            names.append(f"letter_{c.lower()}")
        else:
            raise ValueError(f"cannot read {c!r} of {voice!r} aloud")
    return (*names, "hao")


def build_voices(dest: str | Path, texts: Mapping[str, str] | None = None, *,
                 espeak: str = "espeak-ng", force: bool = False) -> list[Path]:
    """Generate ``dest/<name>.wav`` for every clip (default: :data:`SPOKEN_CLIPS` and
    :data:`NUMBER_CLIPS`) with espeak-ng's Mandarin voice; clips already there are kept
    unless ``force``. Returns the files generated. Raises :class:`ConfigError` when
    espeak-ng is missing or fails."""
    texts = dict(texts) if texts is not None else {**SPOKEN_CLIPS, **NUMBER_CLIPS}
    exe = shutil.which(espeak)
    if exe is None:
        raise ConfigError(f"voice clips need {espeak} (Debian package espeak-ng; "
                          "'make deps' installs it)")
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, text in texts.items():
        target = out / f"{name}.wav"
        if target.exists() and not force:
            continue
        tmp = target.with_name(f".{name}.tmp.wav")
        r = subprocess.run([exe, *_ESPEAK_ARGS, "-w", str(tmp), text],
                           capture_output=True, text=True, timeout=30, check=False)
        if r.returncode != 0 or not tmp.exists():
            raise ConfigError(f"espeak-ng failed for clip {name!r}: {r.stderr.strip()}")
        os.replace(tmp, target)
        made.append(target)
    return made


@dataclass(frozen=True, slots=True)
class VoicePlay:
    """One playback started at ``at_ns`` (``time.monotonic_ns()``): the voice asked for,
    the clips that say it and their files."""

    at_ns: int
    voice: str
    clips: tuple[str, ...]
    files: tuple[str, ...]


class VoicePlayer:
    """Plays voices from clip files in ``voice_dir`` (``sim`` base: records only).

    ``texts`` are extra or overriding clips (name → Mandarin text). With ``generate``,
    missing clips are generated at construction (on first use of the directory), never
    at a tap.
    """

    name = "voice:sim"

    def __init__(self, voice_dir: str | Path | None = None, *,
                 texts: Mapping[str, str] | None = None, generate: bool = False) -> None:
        self.voice_dir = Path(voice_dir) if voice_dir else default_voice_dir()
        self.texts = {**SPOKEN_CLIPS, **NUMBER_CLIPS, **(texts or {})}
        if generate:
            build_voices(self.voice_dir, self.texts)
        self.played: list[VoicePlay] = []
        self._lock = threading.Lock()

    def files_for(self, voice: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(clip names, files)`` for ``voice``. Raises ``KeyError`` for an unknown clip
        and ``ValueError`` for an unreadable number."""
        names = clip_names(voice)
        missing = [n for n in names if n not in self.texts]
        if missing:
            raise KeyError(f"unknown voice clip {', '.join(missing)}")
        return names, tuple(str(self.voice_dir / f"{n}.wav") for n in names)

    def play(self, voice: str) -> VoicePlay | None:
        """Start saying ``voice`` and return (never raises: an unknown clip or a failed
        player is logged and None returned)."""
        try:
            names, files = self.files_for(voice)
        except (KeyError, ValueError) as err:
            log.warning("voice %r not played: %s", voice, err)
            return None
        event = VoicePlay(time.monotonic_ns(), voice, names, files)
        try:
            self._start(files)
        except OSError as err:
            log.warning("voice %r not played: %s", voice, err)
            return None
        with self._lock:
            self.played.append(event)
        return event

    def _start(self, files: Iterable[str]) -> None:
        """Backend primitive: start playing ``files`` in order (sim: nothing)."""

    def close(self) -> None:
        """Stop playback (sim: nothing)."""


class SimVoice(VoicePlayer):
    """Records what would be played in :attr:`played`."""


class AlsaVoice(VoicePlayer):
    """Plays through ALSA with ``aplay`` on ``device``; a new voice cuts the previous one.

    Raises :class:`ConfigError` when ``aplay`` (Debian package alsa-utils) is missing.
    ``stderr`` is where aplay's messages go (``subprocess.PIPE`` lets a benchmark read
    ``aplay -v``'s line announcing the device is open).
    """

    name = "voice:alsa"

    def __init__(self, voice_dir: str | Path | None = None, *, device: str = "default",
                 texts: Mapping[str, str] | None = None, generate: bool = True,
                 aplay: str = "aplay", verbose: bool = False) -> None:
        super().__init__(voice_dir, texts=texts, generate=generate)
        exe = shutil.which(aplay)
        if exe is None:
            raise ConfigError(f"voice player 'alsa' needs {aplay} (Debian package alsa-utils)")
        self.command = [exe, "-v" if verbose else "-q", "-D", device]
        self.verbose = verbose
        self.process: subprocess.Popen[bytes] | None = None

    def _start(self, files: Iterable[str]) -> None:
        self.close()
        self.process = subprocess.Popen(
            [*self.command, *files], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if self.verbose else subprocess.DEVNULL)

    def close(self) -> None:
        p, self.process = self.process, None
        if p is not None:
            if p.poll() is None:
                p.terminate()
            p.wait(timeout=5)
            if p.stderr is not None:
                p.stderr.close()


def make_player(kind: str, voice_dir: str | Path | None = None, *, device: str = "default",
                texts: Mapping[str, str] | None = None) -> VoicePlayer | None:
    """The player named by the prompt option ``player``: ``none`` → None, ``sim``,
    ``alsa``. Raises :class:`ConfigError` for another name or a missing tool."""
    if kind == "none":
        return None
    if kind == "sim":
        return SimVoice(voice_dir, texts=texts)
    if kind == "alsa":
        return AlsaVoice(voice_dir, device=device, texts=texts)
    raise ConfigError(f"prompt player must be none, sim or alsa, not {kind!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m drivers.voice [DIR] [--force]``: generate the clips (``make voices``)."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    force = "--force" in args
    dirs = [a for a in args if a != "--force"]
    dest = Path(dirs[0]) if dirs else default_voice_dir()
    try:
        made = build_voices(dest, force=force)
    except ConfigError as err:
        print(f"voices: {err}", file=sys.stderr)
        return 2
    print(f"voices: {len(made)} clip(s) generated in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
