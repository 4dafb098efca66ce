"""Declarative rule sets: TOML → validated models → compiled first-match rules.

A profile file holds ``[profile]``, ``[prompts]`` (reason → prompt), ``[[rule]]`` (evaluated
in order, first match decides) and ``[[vector]]`` (test vectors run on load: a rule set
whose vectors do not all pass is refused). The format is in ``docs/rules.md``.

Rules see only :class:`Facts` — everything already looked up locally — so evaluating
them never touches the disk or the network and takes microseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import ConfigurationError
from agent.model import Decision, Prompt, Reason
from agent.profile_checks import DEFAULT_PROMPTS, Loc, SettingValues, check_prompt
from agent.regions import AreaCode, RegionScope
from agent.rule_conditions import Predicate, compile_when, parse_hours
from agent.tomlconf import ConfigFileError, format_loc, key_lines, load_toml_model, read_utf8
from agent.workdays import day_kind

__all__ = ["Facts", "RuleSet", "RuleSetError", "load_ruleset"]


class RuleSetError(ConfigurationError):
    """A rule set is invalid or its test vectors fail."""


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a rule may look at for one credential, looked up before evaluation.

    ``site_counters`` are terminal-wide counts in the current time slot (museum capacity);
    ``service`` is the service type chosen at a kiosk (取号), "" elsewhere.

    ``now`` is local wall time (timezone-aware). ``since_last_tap_s`` is seconds since this
    credential's last counted tap in this scope (vehicle/gate), None if none.
    ``counters`` are today's per-holder counts; ``entitlements`` the names the holder is
    entitled to today (store entitlements plus credential claims).
    ``working_day``/``holiday`` describe ``now``'s local date (the calendar part, else the
    weekday rule: :func:`agent.workdays.day_kind`); ``region`` is the credential's issuing
    area code ("" if unknown); ``clock_trusted`` is False when the decision time is known
    to be unreliable (:attr:`agent.timebase.TimeBase.trusted`).
    """

    now: datetime
    kind: str = "ssc_card"
    hotlisted: bool = False
    expired: bool = False
    age: int | None = None
    entitlements: frozenset[str] = frozenset()
    since_last_tap_s: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    policy_stale: bool = False
    gate_in_service: bool = True
    site_counters: dict[str, int] = field(default_factory=dict)
    service: str = ""
    reserved: bool | None = None
    """The holder reserved (预约) today's current slot or the day; None: the site takes no
    reservations (no ``reservations`` policy part)."""
    working_day: bool = True
    holiday: bool = False
    region: str = ""
    clock_trusted: bool = True


# ----------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: a whole number, or the name of a ``[settings]`` key holding it (one source of truth)
Count = Annotated[int, Field(ge=1)] | str
Years = Annotated[int, Field(ge=0, le=150)] | str
Fen = Annotated[int, Field(ge=0)] | str


class DailyLimit(_Strict):
    counter: str = Field(description="per-holder daily counter name, e.g. 'elderly_free'")
    max: Count = Field(description="the rule matches while today's count is below this "
                                   "(a number or a setting name)")


class When(_Strict):
    """Conditions; all that are given must hold. An empty ``when`` always matches."""

    hotlisted: bool | None = Field(None, description="card or holder on the hotlist (挂失)")
    expired: bool | None = Field(None, description="credential outside its validity dates")
    policy_stale: bool | None = Field(None, description="policy bundle past its expiry")
    gate_out_of_service: bool | None = Field(None, description="the gate reports a fault")
    kind: list[str] | None = Field(None, description="credential kinds; 'qr:*' matches any code")
    entitled_any: list[str] | None = Field(None, description="holder entitled to any of these")
    age_at_least: Years | None = Field(None, description="years, from birth date")
    age_below: Years | None = Field(None, description="years, from birth date")
    repeat_within_s: Count | None = Field(None, description="seconds since last tap here")
    daily_limit: DailyLimit | None = Field(None, description="matches while under the limit")
    daily_count_at_least: DailyLimit | None = Field(
        None, description="matches once today's count has reached max")
    hours_outside: str | None = Field(
        None, description="local 'HH:MM-HH:MM' or a setting name; matches outside")
    hours_within: str | None = Field(
        None, description="local 'HH:MM-HH:MM' or a setting name; matches inside")
    slot_count_at_least: DailyLimit | None = Field(
        None, description="terminal-wide count in the current time slot has reached max")
    service: list[str] | None = Field(None, description="kiosk service types (取号)")
    reserved: bool | None = Field(None, description="the holder reserved (预约) this slot or "
                                  "day; never matches while the site takes no reservations")
    working_day: bool | None = Field(None, description="local date is a working day "
                                     "(calendar part, else Monday–Friday)")
    holiday: bool | None = Field(None, description="local date is a public holiday "
                                 "(calendar part only)")
    card_region: list[Literal["local", "province", "other", "unknown"]] | None = Field(
        None, description="the card's issuing region seen from [profile] region")
    issued_in: list[AreaCode] | None = Field(None, description="area codes (行政区划代码; "
                                             "370300 = all of 3703…); card issued there")

    @field_validator("hours_outside", "hours_within")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None and not v.isidentifier():
            parse_hours(v)
        return v


class PromptSpec(_Strict):
    text: str = Field(description="display text for the passenger; may hold {amount} "
                                  "(yuan), {queue} (queue number) and {<setting>}")
    short: str = Field("", description="large-text form (half the columns); '' = text")
    sound: str = Field("ok", description="beep pattern name")
    voice: str = Field("", description="optional voice clip name, or 'number:{queue}'")

    def build(self) -> Prompt:
        return Prompt(self.text, self.sound, self.voice, self.short)


class RuleSpec(_Strict):
    id: str = Field(description="stable rule id, journaled with each decision")
    description: str = ""
    when: When = Field(default_factory=When)
    accept: Literal["accepted", "already_paid"] | None = None
    deny: Reason | None = None
    product: str = Field("", description="product / fare class")
    amount_cents: int = Field(0, ge=0, description="price in fen (0.01 CNY)")
    amount: Fen | None = Field(None, description="price in fen, or the setting holding it "
                                                 "(instead of amount_cents)")
    count: list[str] = Field(default_factory=list, description="daily counters to consume")
    count_site: list[str] = Field(default_factory=list,
                                  description="terminal-wide time-slot counters to consume")
    queue: str = Field("", description="issue a queue number of this series (e.g. 'A')")
    prompt: PromptSpec | None = None
    concession: str = Field("", description="concession category (elderly, disabled, youfu, "
                            "student): journaled for the operator's subsidy claim")
    replaces: Fen | None = Field(None, description="the standard fare in fen (or the setting "
                                 "holding it) this concession replaces; with 'concession'")

    @model_validator(mode="after")
    def _one_outcome(self) -> RuleSpec:
        if (self.accept is None) == (self.deny is None):
            raise ValueError("a rule needs exactly one of 'accept' or 'deny'")
        if self.deny is not None and self.deny.accepting:
            raise ValueError(f"deny = {self.deny.value!r} is an accepting reason")
        if self.amount is not None and self.amount_cents:
            raise ValueError("give 'amount' or 'amount_cents', not both")
        if bool(self.concession) != (self.replaces is not None) or (
                self.concession and self.accept is None):
            raise ValueError("an accepting rule gives 'concession' and 'replaces' together")
        return self


class VectorSpec(_Strict):
    name: str
    time: datetime = Field(description="local time of the tap, with offset")
    kind: str = "ssc_card"
    age: int | None = None
    entitlements: list[str] = Field(default_factory=list)
    hotlisted: bool = False
    expired: bool = False
    since_last_tap_s: float | None = None
    counters: dict[str, int] = Field(default_factory=dict)
    policy_stale: bool = False
    gate_in_service: bool = True
    site_counters: dict[str, int] = Field(default_factory=dict)
    service: str = ""
    reserved: bool | None = None
    working_day: bool | None = Field(None, description="default: Monday–Friday of 'time'")
    holiday: bool = False
    region: str = Field("", description="the card's issuing area code")
    clock_trusted: bool = True
    expect_reason: Reason
    expect_product: str | None = None
    expect_amount_cents: Fen | None = Field(
        None, description="fen, or the setting holding the expected amount")
    expect_rule: str | None = None

    def facts(self) -> Facts:
        """The vector's inputs as :class:`Facts` (every Facts field but ``now`` has an
        input of the same name here; ``time`` gives ``now``)."""
        given = self.model_dump(include=_VECTOR_FACTS)
        working = (day_kind(self.time.date()).working if self.working_day is None
                   else self.working_day)
        return Facts(now=self.time, entitlements=frozenset(self.entitlements),
                     working_day=working, **given)


_VECTOR_FACTS = {f.name for f in dataclasses.fields(Facts)} - {"now", "entitlements",
                                                               "working_day"}


class ProfileSpec(_Strict):
    name: str
    description: str = ""
    kind: Literal["bus_validator", "scenic_gate", "museum_gate", "service_kiosk"]
    timezone: str = "Asia/Shanghai"
    currency: str = "CNY"
    stale_policy: Literal["keep_deciding", "deny_all"] = Field(
        "keep_deciding", description="what to do when the policy bundle has expired")
    slot_minutes: int = Field(60, ge=1, le=1440, description="length of a capacity time slot")
    display_columns: int = Field(20, ge=8, le=80, description="columns of the narrowest display "
                                 "the prompts must fit (a CJK character takes two)")
    region: AreaCode | Literal[""] = Field("", description="the terminal's own area code "
                                           "(行政区划代码): cards issued there are 'local'")
    local_regions: list[AreaCode] = Field(default_factory=list, description="area codes whose "
                                          "cards also count as local (mutual recognition, 互认)")
    tap_budget_ms: int = Field(300, ge=1, le=60_000, description="a tap (hardware report to "
                               "durable journal record) longer than this is journaled as "
                               "slow_tap and counted in the status (agent/tap_timing.py)")


class RuleFile(_Strict):
    profile: ProfileSpec
    prompts: dict[str, PromptSpec] = Field(default_factory=dict)
    rule: list[RuleSpec] = Field(min_length=1)
    vector: list[VectorSpec] = Field(default_factory=list)
    settings: dict[str, int | str] = Field(
        default_factory=dict, description="named values the rules and prompts refer to "
        "(fares in fen, limits, seconds, 'HH:MM-HH:MM' hours); each must be used")

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleFile:
        seen: set[str] = set()
        for r in self.rule:
            if r.id in seen:
                raise ValueError(f"duplicate rule id {r.id!r}")
            seen.add(r.id)
        unknown = [k for k in self.prompts if k not in Reason.__members__.values()
                   and k not in {r.product for r in self.rule if r.product}]
        if unknown:
            raise ValueError(f"prompts for unknown reasons or products: {', '.join(unknown)}")
        return self


# ----------------------------------------------------------------------------- compile
@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    predicates: tuple[Predicate, ...]
    decision: Decision
    count_site: tuple[str, ...] = ()
    queue: str = ""

    def matches(self, facts: Facts) -> bool:
        return all(p(facts) for p in self.predicates)


class RuleSet:
    """A compiled rule set. Build it with :func:`load_ruleset` (which refuses one with
    :attr:`problems` or failing vectors) or :meth:`with_settings`.

    ``overrides`` replace values of the profile's ``[settings]`` (a policy bundle's
    ``settings`` part); the rules and prompts are compiled with the result.
    """

    def __init__(self, spec: RuleFile, source: str = "<memory>",
                 overrides: Mapping[str, object] | None = None) -> None:
        self.spec = spec
        self.source = source
        self.profile = spec.profile
        self.overrides = dict(overrides or {})
        s = SettingValues(spec.settings, overrides, spec.profile.name)
        self.settings = s
        self._problems: list[tuple[Loc, str]] = []
        self._scope = RegionScope.of(spec.profile.region, spec.profile.local_regions)
        amounts: dict[str, int] = {}
        for r in spec.rule:
            if r.product and r.amount is not None and r.product not in amounts:
                amounts[r.product] = s.number(r.amount, ("rule", spec.rule.index(r), "amount"))
        self._prompts = {k: self._render(p.build(), amounts.get(k, 0), ("prompts", k))
                         for k, p in spec.prompts.items()}
        self.rules: tuple[CompiledRule, ...] = tuple(self._compile(i, r)
                                                     for i, r in enumerate(spec.rule))
        self.expected_amounts = [None if v.expect_amount_cents is None else s.number(
            v.expect_amount_cents, ("vector", j, "expect_amount_cents"))
            for j, v in enumerate(spec.vector)]
        self._check_default_deny()
        self.problems: list[tuple[Loc, str]] = list(dict.fromkeys(
            s.problems + self._problems + s.unused()))
        self.counters = frozenset(c for r in spec.rule for c in r.count)
        self.site_counters = frozenset(
            [c for r in spec.rule for c in r.count_site]
            + [r.when.slot_count_at_least.counter for r in spec.rule
               if r.when.slot_count_at_least is not None])

    @property
    def uses_calendar(self) -> bool:
        """True when a rule has a ``working_day`` or ``holiday`` condition (then a
        terminal without a calendar part is flagged: holidays and 调休 are unknown)."""
        return any(r.when.working_day is not None or r.when.holiday is not None
                   for r in self.spec.rule)

    def _render(self, p: Prompt, amount: int | None, loc: Loc) -> Prompt:
        r = self.settings.render
        out = Prompt(r(p.text, amount, loc), p.sound, p.voice, r(p.short, amount, loc))
        self._problems += check_prompt(out, self.profile.display_columns, loc)
        return out

    def _compile(self, i: int, r: RuleSpec) -> CompiledRule:
        reason = Reason(r.accept) if r.accept is not None else r.deny
        assert reason is not None
        amount = (self.settings.number(r.amount, ("rule", i, "amount"))
                  if r.amount is not None else r.amount_cents)
        if r.prompt is not None:
            prompt = self._render(r.prompt.build(), amount, ("rule", i, "prompt"))
        else:
            key = next((k for k in (r.product, reason.value) if k and k in self.spec.prompts),
                       None)
            if key is None:
                self._problems.append((("rule", i, "deny" if r.deny else "product"),
                                       f"rule {r.id!r} decides {reason.value!r} but [prompts] "
                                       f"has no {reason.value!r}"
                                       + (f" nor {r.product!r}" if r.product else "")))
                prompt = DEFAULT_PROMPTS[reason]
            else:
                spec = self.spec.prompts[key]
                prompt = self._render(spec.build(), amount, ("prompts", key))
        fare_std = (0 if r.replaces is None
                    else self.settings.number(r.replaces, ("rule", i, "replaces")))
        decision = Decision(accepted=reason.accepting, reason=reason, product=r.product,
                            amount_cents=amount if reason.accepting else 0,
                            prompt=prompt, rule_id=r.id, counters=tuple(r.count),
                            category=r.concession, fare_std_cents=fare_std)
        if r.when.card_region is not None and not self.profile.region:
            self._problems.append((("rule", i, "when", "card_region"), "card_region needs "
                                   "the terminal's region ([profile] region)"))
        preds = compile_when(r.when, self.settings, ("rule", i, "when"),
                             favour=reason.accepting, scope=self._scope)
        return CompiledRule(r.id, tuple(preds), decision, tuple(r.count_site), r.queue)

    def _check_default_deny(self) -> None:
        """``not_entitled`` needs a prompt when the rules can end without a match (the
        engine's own denials, e.g. ``policy_stale``, have :data:`DEFAULT_PROMPTS`)."""
        last = len(self.rules) - 1
        if self.rules[last].predicates and "not_entitled" not in self.spec.prompts:
            self._problems.append((("rule", last), "the rules can end without a match "
                                   "(not_entitled) but [prompts] has no 'not_entitled'"))

    def with_settings(self, overrides: Mapping[str, object]) -> RuleSet:
        """This rule set compiled with ``overrides`` of its settings and vector-checked.
        Raises :class:`RuleSetError` naming each problem or failing vector."""
        rs = RuleSet(self.spec, self.source, {**self.overrides, **overrides})
        problems = [f"{format_loc(loc)}: {msg}" for loc, msg in rs.problems] + rs.check_vectors()
        if problems:
            raise RuleSetError(f"{self.source} with settings {dict(overrides)}: refusing to "
                               "activate:\n  " + "\n  ".join(problems))
        return rs

    def prompt_for(self, reason: Reason, product: str = "") -> Prompt:
        """The prompt for a product (if configured) or else a reason (the profile's, else
        the built-in Chinese one: never a raw reason code)."""
        if product and product in self._prompts:
            return self._prompts[product]
        return self._prompts.get(reason.value) or DEFAULT_PROMPTS[reason]

    def evaluate(self, facts: Facts) -> Decision:
        """First matching rule's decision; NOT_ENTITLED (rule ``default-deny``) if none."""
        return self.match(facts).decision

    def match(self, facts: Facts) -> CompiledRule:
        """The first matching rule (a ``default-deny`` rule if none matches)."""
        for rule in self.rules:
            if rule.matches(facts):
                return rule
        return CompiledRule("default-deny", (), Decision(
            False, Reason.NOT_ENTITLED, prompt=self.prompt_for(Reason.NOT_ENTITLED),
            rule_id="default-deny"))

    def check_vectors(self) -> list[str]:
        """Run the test vectors; return one message per failure (empty = all pass)."""
        failures = []
        for v, expected_amount in zip(self.spec.vector, self.expected_amounts, strict=True):
            d = self.evaluate(v.facts())
            wrong = []
            if d.reason != v.expect_reason:
                wrong.append(f"reason {d.reason.value} != {v.expect_reason.value}")
            if v.expect_product is not None and d.product != v.expect_product:
                wrong.append(f"product {d.product!r} != {v.expect_product!r}")
            if expected_amount is not None and d.amount_cents != expected_amount:
                wrong.append(f"amount {d.amount_cents} != {expected_amount}")
            if v.expect_rule is not None and d.rule_id != v.expect_rule:
                wrong.append(f"rule {d.rule_id!r} != {v.expect_rule!r}")
            if wrong:
                failures.append(f"vector {v.name!r}: " + "; ".join(wrong))
        return failures


def load_ruleset(path: str | Path, *, text: str | None = None) -> RuleSet:
    """Load, validate, compile and vector-check a rule/profile file.

    Raises :class:`~agent.tomlconf.ConfigFileError` (file, line, key) for an invalid file,
    a broken or unused setting, a reason without a prompt or a prompt that does not fit
    the display (:mod:`agent.profile_checks`), and :class:`RuleSetError` if the file has no
    vectors or any vector fails: such a rule set is never activated.
    """
    if text is None:
        text = read_utf8(Path(path))       # ConfigFileError for unreadable or non-UTF-8
    spec = load_toml_model(path, RuleFile, text=text)
    rs = RuleSet(spec, str(path))
    if rs.problems:
        lines = key_lines(text)
        raise ConfigFileError(path, [
            f"{path}:{_line(lines, loc)}: {format_loc(loc)}: {msg}"
            for loc, msg in rs.problems])
    if not spec.vector:
        raise RuleSetError(f"{path}: rule set has no test vectors; refusing to activate it")
    failures = rs.check_vectors()
    if failures:
        raise RuleSetError(f"{path}: {len(failures)} test vector(s) failed; refusing to "
                           "activate:\n  " + "\n  ".join(failures))
    return rs


def _line(lines: dict[Loc, int], loc: Loc) -> int | str:
    """The line of ``loc`` or of its nearest written parent ("?" if none)."""
    return next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), "?")


def age_on(birth: date, today: date) -> int:
    """Age in whole years on ``today`` (a person born 29 Feb ages on 1 Mar in common years)."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
