"""Voice: real Mandarin clips (espeak-ng), non-silent and of sensible length (sox), the
right clip for each concession category and numbers read aloud, played through ALSA."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.model import Decision, Reason
from agent.rules import Facts, load_ruleset
from drivers.prompt import SimPrompter
from drivers.voice import NUMBER_CLIPS, SPOKEN_CLIPS, AlsaVoice, SimVoice, build_voices
from profiles import profile_path

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("voices")
    made = build_voices(d)
    assert len(made) == len(SPOKEN_CLIPS) + len(NUMBER_CLIPS)
    return d


def _stat(path: Path) -> dict[str, float]:
    r = subprocess.run(["sox", str(path), "-n", "stat"], capture_output=True, text=True,
                       check=True, timeout=30)
    return {" ".join(m.group(1).split()): float(m.group(2))
            for m in re.finditer(r"^([A-Za-z ]+\([a-z]+\)|[A-Za-z ]+):\s+(-?[\d.]+)$",
                                 r.stderr, re.M)}


def test_every_clip_is_real_non_silent_audio_of_sensible_length(voice_dir: Path) -> None:
    for name in (*SPOKEN_CLIPS, *NUMBER_CLIPS):
        path = voice_dir / f"{name}.wav"
        assert path.exists(), name
        st = _stat(path)
        assert 0.2 <= st["Length (seconds)"] <= 5.0, (name, st["Length (seconds)"])
        assert st["RMS amplitude"] > 0.01 and st["Maximum amplitude"] > 0.1, (name, st)
    longer = _stat(voice_dir / "gate_out_of_service.wav")["Length (seconds)"]
    assert longer > _stat(voice_dir / "hao.wav")["Length (seconds)"]   # it says more


@pytest.mark.parametrize("profile", ["bus_validator", "scenic_gate"])
@pytest.mark.parametrize(("category", "clip"), [
    ("elderly", "elderly"), ("disabled", "disabled"), ("youfu", "preferential"),
    ("student", "student")])
def test_each_concession_category_plays_its_clip(voice_dir: Path, profile: str, category: str,
                                                 clip: str) -> None:
    rs = load_ruleset(profile_path(profile))
    decision = rs.evaluate(Facts(now=datetime(2026, 11, 25, 10, tzinfo=TZ), age=40,
                                 entitlements=frozenset({category}), region="370302"))
    if profile == "scenic_gate" and category == "student":
        assert not decision.accepted        # the scenic gate has no student concession
        return
    player = SimVoice(voice_dir)
    prompter = SimPrompter(player=player, voice_dir=voice_dir)
    prompter.act(decision, None)
    assert [p.clips for p in player.played] == [(clip,)]
    played = player.played[0].files[0]
    assert played == str(voice_dir / f"{clip}.wav") and Path(played).exists()
    assert prompter.history[-1].voice_text == SPOKEN_CLIPS[clip]


def test_a_queue_number_is_read_aloud_and_shown_in_large_text(voice_dir: Path) -> None:
    from agent.model import Prompt

    rs = load_ruleset(profile_path("service_kiosk"))
    d = rs.evaluate(Facts(now=datetime(2026, 11, 25, 10, tzinfo=TZ), service="B"))
    player = SimVoice(voice_dir)
    prompter = SimPrompter(player=player, voice_dir=voice_dir, large_text=True)
    prompter.act(Decision(True, Reason.ACCEPTED, prompt=d.prompt.with_queue("B012")), None)
    assert player.played[0].clips == ("letter_b", "digit_0", "digit_1", "digit_2", "hao")
    assert all(Path(f).exists() for f in player.played[0].files)
    event = prompter.history[-1]
    assert (event.display, event.voice_text) == ("B012号", "B012号")
    normal = SimPrompter().show(Prompt("养老保险 B012号", short="B012号"))
    assert normal.display == "养老保险 B012号"


def test_alsa_player_plays_the_clips_through_aplay(voice_dir: Path) -> None:
    player = AlsaVoice(voice_dir, device="null", verbose=True)
    try:
        played = player.play("number:A001")
        assert played is not None and player.process is not None
        proc = player.process
        assert proc.stderr is not None
        out = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 0, out
        assert out.count("Playing WAVE") == 5 and "letter_a.wav" in out, out
    finally:
        player.close()


def test_built_in_prompts_name_clips_that_exist() -> None:
    from agent.profile_checks import DEFAULT_PROMPTS

    for reason, prompt in DEFAULT_PROMPTS.items():
        assert not prompt.voice or prompt.voice in SPOKEN_CLIPS, (reason, prompt.voice)
