"""Tables line up in Chinese: padding by display width (wcwidth), not by len()."""

from __future__ import annotations

from agent.cli.demo import _line
from agent.engine import Outcome
from agent.model import Decision, Prompt, Reason
from agent.textcols import display_width, pad


def test_pad_counts_wide_characters_as_two_columns() -> None:
    assert display_width("老年卡 免费") == 11 and len("老年卡 免费") == 6
    assert display_width(pad("老年卡 免费", 20)) == 20
    assert pad("12", 5, ">") == "   12"
    cut = pad("社保卡业务 A001号 请到3号窗口办理", 12)
    assert display_width(cut) == 12 and cut.endswith("…")


def test_demo_lines_put_every_column_at_the_same_display_position() -> None:
    prompts = ["老年卡 免费", "普通卡 2.00元", "请重新刷卡", "OK"]
    lines = [_line(Outcome(Decision(True, Reason.ACCEPTED, prompt=Prompt(p)), None), "张* elderly")
             for p in prompts]
    # the reason column starts after the same number of display columns on every line
    starts = [display_width(line[:line.index("accepted")]) for line in lines]
    assert len(set(starts)) == 1, (starts, lines)
