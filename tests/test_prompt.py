"""Prompts: the sim backend records text, sound and voice; the GPIO buzzer plays patterns."""

from __future__ import annotations

import logging

import pytest

from agent.model import Decision, Prompt, Reason
from drivers.exceptions import ConfigError
from drivers.gpio import GpioBoard, ManualScheduler
from drivers.options import BuzzerPromptOptions, PromptOptions
from drivers.prompt import (
    BEEP_PATTERNS,
    BuzzerPrompter,
    LogPrompter,
    SimPrompter,
    display_width,
    fit_display,
)
from drivers.registry import load_actuator

ELDERLY = Decision(True, Reason.ACCEPTED, product="elderly_free",
                   prompt=Prompt("老年卡 免费", sound="ok_concession", voice="elderly"))


def test_sim_records_text_sound_and_voice() -> None:
    p = SimPrompter(voice_dir="/usr/share/ykt/voice")
    p.act(ELDERLY, None)
    [e] = p.history
    assert (e.text, e.display, e.sound, e.voice) == ("老年卡 免费", "老年卡 免费", "ok_concession",
                                                     "elderly")
    assert e.pattern == BEEP_PATTERNS["ok_concession"]
    assert e.voice_text == "老年卡" and e.clip == "/usr/share/ykt/voice/elderly.wav"
    assert p.last == e


def test_student_voice_and_plain_accept() -> None:
    p = SimPrompter()
    p.show(Prompt("学生卡", sound="ok", voice="student"))
    p.show(Prompt("一元"))
    assert [(e.voice_text, e.clip, e.pattern) for e in p.history] == [
        ("学生卡", "student.wav", (80,)), ("", "", (80,))]


@pytest.mark.parametrize(("reason", "sound"), [
    (Reason.HOTLISTED, "deny_hotlist"),
    (Reason.MULTIPLE_CARDS, "retry"),
    (Reason.GATE_OUT_OF_SERVICE, "out_of_service"),
    (Reason.EXPIRED, "deny"),
])
def test_denials_never_play_the_accept_beep(reason: Reason, sound: str) -> None:
    p = SimPrompter()
    p.act(Decision(False, reason, prompt=Prompt("已挂失 请到窗口")), None)
    assert p.history[-1].sound == sound
    assert p.history[-1].pattern == BEEP_PATTERNS[sound]


def test_a_chosen_deny_pattern_is_kept_and_profiles_can_override() -> None:
    p = SimPrompter(patterns={"chirp": [30, 30, 30]}, sounds={"passback": "chirp"},
                    voices={"veteran": "优抚卡"})
    p.act(Decision(False, Reason.PASSBACK, prompt=Prompt("请勿重复刷卡")), None)
    p.act(Decision(False, Reason.EXPIRED, prompt=Prompt("卡已过期", sound="error")), None)
    p.show(Prompt("优抚 免费", voice="veteran"))
    assert [e.sound for e in p.history] == ["chirp", "error", "ok"]
    assert p.history[0].pattern == (30, 30, 30)
    assert p.history[2].voice_text == "优抚卡"


def test_unknown_pattern_and_voice_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    p = SimPrompter()
    p.show(Prompt("?", sound="fanfare", voice="martian"))
    assert p.history[0].pattern == BEEP_PATTERNS["error"]
    assert p.history[0].clip == ""
    assert "fanfare" in caplog.text and "martian" in caplog.text


def test_display_line_is_fitted_to_its_columns() -> None:
    assert display_width("请单张刷卡") == 10 and display_width("A1") == 2
    assert fit_display("请单张刷卡", 10) == "请单张刷卡"
    assert fit_display("已挂失 请到窗口办理", 12) == "已挂失 请到…"
    assert display_width(fit_display("已挂失 请到窗口办理", 12)) <= 12
    p = SimPrompter(display_columns=8)
    p.show(Prompt("余额不足 请充值"))
    assert p.history[0].display == "余额不…" and p.history[0].text == "余额不足 请充值"


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        SimPrompter(display_columns=2)
    with pytest.raises(ConfigError):
        SimPrompter(sounds={"accepted": "fanfare"})
    with pytest.raises(ConfigError):
        SimPrompter(sounds={"no_such_reason": "ok"})
    with pytest.raises(ConfigError, match="display_colums"):
        SimPrompter(display_colums=16)                     # a typo is not silently ignored
    with pytest.raises(ConfigError, match="buzer"):
        BuzzerPrompter(gpio={"backend": "mock", "buzzers": {"main": {"pin": 22}}}, buzer="main")
    with pytest.raises(ValueError, match="buzer"):       # and so do the options of a file
        BuzzerPromptOptions.model_validate(
            {"gpio": {"backend": "mock", "buzzers": {"main": {"pin": 22}}}, "buzer": "main"})


def test_log_backend_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.prompt")
    p = load_actuator("prompt", "log").from_options(PromptOptions())
    assert isinstance(p, LogPrompter)
    p.act(ELDERLY, None)
    assert "老年卡 免费" in caplog.text and "voice 老年卡" in caplog.text
    assert len(p.history) == 1


def test_gpio_buzzer_plays_the_outcome_pattern() -> None:
    clock = ManualScheduler()
    played: list[str] = []
    p = BuzzerPrompter(gpio={"backend": "mock", "buzzers": {"main": {"pin": 22}}},
                       scheduler=clock, voice_player=played.append, voice_dir="/v")
    try:
        assert isinstance(p, BuzzerPrompter)
        pin = p.board.mock_pin("main")
        pin.clear_states()
        p.act(Decision(False, Reason.HOTLISTED, prompt=Prompt("已挂失 请到窗口")), None)
        clock.advance(5)
        pin.assert_states_and_times([(0, False), (0, True), (0.4, False), (0.1, True),
                                     (0.4, False), (0.1, True), (0.4, False)])
        p.act(ELDERLY, None)
        assert played == ["/v/elderly.wav"]
        assert [e.sound for e in p.history] == ["deny_hotlist", "ok_concession"]
    finally:
        p.close()
        p.close()


def test_gpio_backend_from_its_options() -> None:
    options = BuzzerPromptOptions.model_validate(
        {"gpio": {"backend": "mock", "buzzers": {"horn": {"pin": 22}}}, "buzzer": "horn",
         "sounds": {"hotlisted": "error"}})
    p = load_actuator("prompt", "gpio").from_options(options)
    try:
        assert isinstance(p, BuzzerPrompter)
        assert p.buzzer is p.board.buzzer("horn")
        p.act(Decision(False, Reason.HOTLISTED), None)
        assert p.history[0].sound == "error"        # the configured sound, as a Reason key
    finally:
        p.close()


@pytest.mark.expect_log("drivers.prompt", r"playing voice clip elderly.wav failed")
def test_gpio_backend_on_a_shared_board() -> None:
    clock = ManualScheduler()
    with GpioBoard({"backend": "mock", "buzzers": {"beeper": {"pin": 22}}},
                   scheduler=clock) as board:
        def broken_player(path: str) -> None:
            raise OSError(f"no sound card for {path}")

        p = BuzzerPrompter(board=board, buzzer="beeper", voice_player=broken_player)
        p.act(ELDERLY, None)                     # a failing voice player is logged only
        assert board.buzzer("beeper").is_active
        clock.advance(1)
        assert not board.buzzer("beeper").is_active
        p.close()
    with pytest.raises(ConfigError):
        BuzzerPrompter()
