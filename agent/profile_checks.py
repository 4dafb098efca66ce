"""What a profile must hold before it decides a tap: resolved settings and prompts for people.

A profile's ``[settings]`` are named values (fares in fen, limits, seconds, opening hours)
that rules and prompts refer to by name, so a city changes a fare in one place:
``amount = "standard_fare"`` in a rule, ``"普通卡 {amount}元"`` in its prompt. A policy
bundle's ``settings`` part overrides them per profile (``{"bus_validator":
{"standard_fare": 250}}``). :class:`SettingValues` resolves those references and records
every problem with the key path it belongs to (``("rule", 3, "amount")``), so the loader
can name file, line and key.

Load-time checks (each problem refuses the rule set, like a failing test vector):

* a reference to a setting that does not exist, or of the wrong type;
* a setting nothing refers to (no dead settings), an override of an unknown setting;
* a reason a rule can produce with no prompt in ``[prompts]`` (or on the rule);
* a prompt without Chinese text, one wider than the profile's ``display_columns``
  (display columns: a CJK character takes two), or one whose large-text form (``short``,
  else the text) is wider than half of them.

:data:`DEFAULT_PROMPTS` gives every :class:`~agent.model.Reason` a Chinese prompt, so the
decisions made before the rules (a replayed code, a card that is no social security card)
never show a raw reason code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from agent.model import Prompt, Reason
from agent.textcols import display_width

__all__ = ["DEFAULT_PROMPTS", "QUEUE_NUMBER_SAMPLE", "Loc", "SettingValues", "check_prompt",
           "format_yuan"]

Loc = tuple[str | int, ...]

#: what a queue number looks like on the display (series letter + three digits)
QUEUE_NUMBER_SAMPLE = "A001"

#: every reason's prompt when the profile names none (text, beep, voice, large-text form)
DEFAULT_PROMPTS: dict[Reason, Prompt] = {
    Reason.ACCEPTED: Prompt("请通行", "ok"),
    Reason.ALREADY_PAID: Prompt("已刷卡", "ok"),
    Reason.HOTLISTED: Prompt("已挂失 请到窗口", "deny_hotlist", "hotlisted", "已挂失"),
    Reason.EXPIRED: Prompt("卡已过期", "deny", "invalid"),
    Reason.NOT_ENTITLED: Prompt("无效卡", "deny", "invalid"),
    Reason.PASSBACK: Prompt("今日已使用", "deny", "", "已使用"),
    Reason.LIMIT_REACHED: Prompt("今日次数已满", "deny", "", "次数已满"),
    Reason.OUTSIDE_HOURS: Prompt("不在服务时间", "deny", "", "非服务时间"),
    Reason.CAPACITY_FULL: Prompt("本时段已满", "deny", "", "已满"),
    Reason.NO_RESERVATION: Prompt("未预约 请先预约", "deny", "", "请先预约"),
    Reason.POLICY_STALE: Prompt("数据过期 请人工核验", "deny", "", "请人工核验"),
    Reason.CODE_EXPIRED: Prompt("码已过期 请刷新", "deny", "refresh_code", "请刷新"),
    Reason.CODE_NOT_YET_VALID: Prompt("码未生效 请刷新", "deny", "refresh_code", "请刷新"),
    Reason.CODE_REPLAYED: Prompt("码已使用 请刷新", "deny", "refresh_code", "请刷新"),
    Reason.BAD_SIGNATURE: Prompt("无效码", "deny", "invalid"),
    Reason.UNKNOWN_ISSUER: Prompt("无效码", "deny", "invalid"),
    Reason.CERT_EXPIRED: Prompt("无效码", "deny", "invalid"),
    Reason.MALFORMED_CODE: Prompt("无法识别 请重扫", "retry", "", "请重扫"),
    Reason.UNSUPPORTED_CODE: Prompt("不支持此码", "deny", "invalid", "不支持"),
    Reason.ONLINE_UNAVAILABLE: Prompt("请出示实体卡", "deny", "", "请出示卡"),
    Reason.CARD_AUTH_FAILED: Prompt("卡片无效", "deny", "invalid"),
    Reason.NOT_SSC: Prompt("非社保卡 请重刷", "deny", "tap_again", "请重刷"),
    Reason.MULTIPLE_CARDS: Prompt("请单张刷卡", "retry", "single_card", "请单张"),
    Reason.CARD_REMOVED: Prompt("请重新刷卡", "retry", "tap_again", "请重刷"),
    Reason.READ_ERROR: Prompt("读卡失败 请重刷", "retry", "tap_again", "请重刷"),
    Reason.GATE_OUT_OF_SERVICE: Prompt("闸机故障 走人工通道", "out_of_service",
                                       "gate_out_of_service", "请走人工"),
    Reason.INTERNAL_ERROR: Prompt("设备故障 请稍后", "error", "", "设备故障"),
}

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_HOURS = re.compile(r"^\s*\d{1,2}:\d{2}\s*-\s*\d{1,2}:\d{2}\s*$")


def format_yuan(cents: int) -> str:
    """Fen as yuan for a prompt: 200 → ``"2.00"``."""
    return f"{cents // 100}.{cents % 100:02d}"


class SettingValues:
    """A profile's settings (with a bundle's overrides) as rules and prompts use them.

    Resolving a reference marks the setting used; problems are collected in
    :attr:`problems` as ``(key path, message)`` instead of raised, so all are reported.
    """

    def __init__(self, own: Mapping[str, int | str], overrides: Mapping[str, object] | None,
                 profile: str) -> None:
        self.values: dict[str, int | str] = dict(own)
        self.used: set[str] = set()
        self.problems: list[tuple[Loc, str]] = []
        for key, value in (overrides or {}).items():
            if key not in own:
                self.problems.append((("settings", key), f"the policy bundle sets {key!r}, "
                                      f"which is not a setting of profile {profile!r}"))
            elif isinstance(value, bool) or type(value) is not type(own[key]):
                self.problems.append((("settings", key), f"the policy bundle sets {key!r} to "
                                      f"{value!r}; the profile's value is {own[key]!r}"))
            else:
                self.values[key] = value  # type: ignore[assignment]

    def number(self, ref: int | str, loc: Loc) -> int:
        """``ref`` as a whole number: itself, or the integer setting it names (0 if broken)."""
        if isinstance(ref, int):
            return ref
        value = self._get(ref, loc)
        if value is None:
            return 0
        if not isinstance(value, int) or value < 0:
            self.problems.append((loc, f"setting {ref!r} = {value!r} is not a whole number"))
            return 0
        return value

    def hours(self, ref: str, loc: Loc) -> str:
        """``ref`` as ``'HH:MM-HH:MM'``: itself, or the setting it names."""
        if _HOURS.match(ref):
            return ref
        value = self._get(ref, loc)
        if not isinstance(value, str) or not _HOURS.match(value):
            if value is not None:
                self.problems.append((loc, f"setting {ref!r} = {value!r} is not 'HH:MM-HH:MM'"))
            return "00:00-23:59"
        return value

    def render(self, text: str, amount_cents: int | None, loc: Loc) -> str:
        """``text`` with ``{amount}`` (yuan) and ``{<setting>}`` filled; ``{queue}`` stays."""
        def fill(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "queue":
                return m.group(0)
            if name == "amount":
                if amount_cents is None:
                    self.problems.append((loc, "{amount} in a prompt no priced rule uses"))
                    return "0.00"
                return format_yuan(amount_cents)
            value = self._get(name, loc)
            return "" if value is None else str(value)
        return _PLACEHOLDER.sub(fill, text)

    def unused(self) -> list[tuple[Loc, str]]:
        """A problem for each setting nothing refers to."""
        return [(("settings", k), f"setting {k!r} is used by no rule or prompt (remove it)")
                for k in self.values if k not in self.used]

    def _get(self, name: str, loc: Loc) -> int | str | None:
        if name not in self.values:
            self.problems.append((loc, f"no setting {name!r} in [settings]"))
            return None
        self.used.add(name)
        return self.values[name]


def check_prompt(prompt: Prompt, columns: int, loc: Loc) -> list[tuple[Loc, str]]:
    """Problems of one rendered prompt on a display of ``columns`` columns."""
    text = prompt.text.replace("{queue}", QUEUE_NUMBER_SAMPLE)
    short = (prompt.short or prompt.text).replace("{queue}", QUEUE_NUMBER_SAMPLE)
    problems: list[tuple[Loc, str]] = []
    if not _CJK.search(text):
        problems.append((loc, f"prompt {prompt.text!r} has no Chinese text"))
    if display_width(text) > columns:
        problems.append((loc, f"prompt {text!r} takes {display_width(text)} columns; the "
                         f"display has {columns}"))
    if display_width(short) > columns // 2:
        what = "short form" if prompt.short else "prompt (give a 'short' form)"
        problems.append((loc, f"large text: {what} {short!r} takes {display_width(short)} "
                         f"columns; large text has {columns // 2}"))
    return problems
