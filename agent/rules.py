"""Declarative rule sets: TOML → validated models → compiled first-match rules.

A profile file holds ``[profile]``, ``[prompts]`` (reason → prompt), ``[[rule]]`` (evaluated
in order, first match decides) and ``[[vector]]`` (test vectors run on load: a rule set
whose vectors do not all pass is refused). The format is in ``docs/rules.md``.

Rules see only :class:`Facts` — everything already looked up locally — so evaluating
them never touches the disk or the network and takes microseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.errors import ConfigurationError
from agent.model import Decision, Prompt, Reason
from agent.tomlconf import load_toml_model

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


# ----------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_hours(value: str) -> tuple[time, time]:
    try:
        a, b = value.split("-")
        return time.fromisoformat(a.strip()), time.fromisoformat(b.strip())
    except ValueError:
        raise ValueError(f"hours must look like '06:00-22:00', got {value!r}") from None


class DailyLimit(_Strict):
    counter: str = Field(description="per-holder daily counter name, e.g. 'elderly_free'")
    max: int = Field(ge=1, description="the rule matches while today's count is below this")


class When(_Strict):
    """Conditions; all that are given must hold. An empty ``when`` always matches."""

    hotlisted: bool | None = Field(None, description="card or holder on the hotlist (挂失)")
    expired: bool | None = Field(None, description="credential outside its validity dates")
    policy_stale: bool | None = Field(None, description="policy bundle past its expiry")
    gate_out_of_service: bool | None = Field(None, description="the gate reports a fault")
    kind: list[str] | None = Field(None, description="credential kinds; 'qr:*' matches any code")
    entitled_any: list[str] | None = Field(None, description="holder entitled to any of these")
    age_at_least: int | None = Field(None, ge=0, le=150, description="years, from birth date")
    age_below: int | None = Field(None, ge=0, le=150, description="years, from birth date")
    repeat_within_s: int | None = Field(None, ge=1, description="seconds since last tap here")
    daily_limit: DailyLimit | None = Field(None, description="matches while under the limit")
    daily_count_at_least: DailyLimit | None = Field(
        None, description="matches once today's count has reached max")
    hours_outside: str | None = Field(None, description="local 'HH:MM-HH:MM'; matches outside")
    hours_within: str | None = Field(None, description="local 'HH:MM-HH:MM'; matches inside")
    slot_count_at_least: DailyLimit | None = Field(
        None, description="terminal-wide count in the current time slot has reached max")
    service: list[str] | None = Field(None, description="kiosk service types (取号)")

    @field_validator("hours_outside", "hours_within")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None:
            _parse_hours(v)
        return v


class PromptSpec(_Strict):
    text: str = Field(description="display text for the passenger")
    sound: str = Field("ok", description="beep pattern name")
    voice: str = Field("", description="optional voice clip name")

    def build(self) -> Prompt:
        return Prompt(self.text, self.sound, self.voice)


class RuleSpec(_Strict):
    id: str = Field(description="stable rule id, journaled with each decision")
    description: str = ""
    when: When = Field(default_factory=When)
    accept: Literal["accepted", "already_paid"] | None = None
    deny: Reason | None = None
    product: str = Field("", description="product / fare class")
    amount_cents: int = Field(0, ge=0, description="price in fen (0.01 CNY)")
    count: list[str] = Field(default_factory=list, description="daily counters to consume")
    count_site: list[str] = Field(default_factory=list,
                                  description="terminal-wide time-slot counters to consume")
    queue: str = Field("", description="issue a queue number of this series (e.g. 'A')")
    prompt: PromptSpec | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> RuleSpec:
        if (self.accept is None) == (self.deny is None):
            raise ValueError("a rule needs exactly one of 'accept' or 'deny'")
        if self.deny is not None and self.deny.accepting:
            raise ValueError(f"deny = {self.deny.value!r} is an accepting reason")
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
    expect_reason: Reason
    expect_product: str | None = None
    expect_amount_cents: int | None = None
    expect_rule: str | None = None

    def facts(self) -> Facts:
        """The vector's inputs as :class:`Facts` (every Facts field but ``now`` has an
        input of the same name here; ``time`` gives ``now``)."""
        given = self.model_dump(include=_VECTOR_FACTS)
        return Facts(now=self.time, entitlements=frozenset(self.entitlements), **given)


_VECTOR_FACTS = {f.name for f in dataclasses.fields(Facts)} - {"now", "entitlements"}


class ProfileSpec(_Strict):
    name: str
    description: str = ""
    kind: Literal["bus_validator", "scenic_gate", "museum_gate", "service_kiosk"]
    timezone: str = "Asia/Shanghai"
    currency: str = "CNY"
    stale_policy: Literal["keep_deciding", "deny_all"] = Field(
        "keep_deciding", description="what to do when the policy bundle has expired")
    slot_minutes: int = Field(60, ge=1, le=1440, description="length of a capacity time slot")


class RuleFile(_Strict):
    profile: ProfileSpec
    prompts: dict[str, PromptSpec] = Field(default_factory=dict)
    rule: list[RuleSpec] = Field(min_length=1)
    vector: list[VectorSpec] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="profile-specific settings (drivers, timings)")

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
Predicate = Callable[[Facts], bool]


def _kind_matches(patterns: list[str]) -> Predicate:
    exact = {p for p in patterns if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    def match(f: Facts) -> bool:
        return f.kind in exact or (bool(prefixes) and f.kind.startswith(prefixes))

    return match


def _flag(get: Callable[[Facts], bool], want: bool) -> Predicate:
    return lambda f: get(f) == want


def _compile_when(w: When) -> list[Predicate]:
    preds: list[Predicate] = []
    if w.hotlisted is not None:
        preds.append(_flag(lambda f: f.hotlisted, w.hotlisted))
    if w.expired is not None:
        preds.append(_flag(lambda f: f.expired, w.expired))
    if w.policy_stale is not None:
        preds.append(_flag(lambda f: f.policy_stale, w.policy_stale))
    if w.gate_out_of_service is not None:
        preds.append(_flag(lambda f: not f.gate_in_service, w.gate_out_of_service))
    if w.kind is not None:
        preds.append(_kind_matches(w.kind))
    if w.entitled_any is not None:
        names = frozenset(w.entitled_any)
        preds.append(lambda f: not names.isdisjoint(f.entitlements))
    if w.age_at_least is not None:
        min_age = w.age_at_least
        preds.append(lambda f: f.age is not None and f.age >= min_age)
    if w.age_below is not None:
        max_age = w.age_below
        preds.append(lambda f: f.age is not None and f.age < max_age)
    if w.repeat_within_s is not None:
        window = w.repeat_within_s
        # a negative interval (a clock set back) is a repeat, never a new fare
        preds.append(lambda f: f.since_last_tap_s is not None
                     and f.since_last_tap_s < window)
    if w.daily_limit is not None:
        lim = w.daily_limit
        preds.append(lambda f: f.counters.get(lim.counter, 0) < lim.max)
    if w.daily_count_at_least is not None:
        reached = w.daily_count_at_least
        preds.append(lambda f: f.counters.get(reached.counter, 0) >= reached.max)
    if w.hours_outside is not None:
        a, b = _parse_hours(w.hours_outside)
        preds.append(lambda f: not (a <= f.now.time() < b))
    if w.slot_count_at_least is not None:
        full = w.slot_count_at_least
        preds.append(lambda f: f.site_counters.get(full.counter, 0) >= full.max)
    if w.service is not None:
        services = frozenset(w.service)
        preds.append(lambda f: f.service in services)
    if w.hours_within is not None:
        a2, b2 = _parse_hours(w.hours_within)
        preds.append(lambda f: a2 <= f.now.time() < b2)
    return preds


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    predicates: tuple[Predicate, ...]
    decision: Decision
    count_site: tuple[str, ...] = ()
    queue: str = ""

    def matches(self, facts: Facts) -> bool:
        return all(p(facts) for p in self.predicates)


_DEFAULT_PROMPTS: dict[Reason, Prompt] = {
    Reason.ACCEPTED: Prompt("请通行", "ok"),
    Reason.ALREADY_PAID: Prompt("已刷卡", "ok"),
    Reason.CARD_REMOVED: Prompt("请重新刷卡", "error"),
    Reason.MULTIPLE_CARDS: Prompt("请单张刷卡", "error"),
    Reason.HOTLISTED: Prompt("已挂失 请到窗口", "deny"),
    Reason.EXPIRED: Prompt("卡已过期", "deny"),
    Reason.GATE_OUT_OF_SERVICE: Prompt("闸机故障 请走人工通道", "error"),
}


class RuleSet:
    """A compiled, vector-checked rule set. Build it with :func:`load_ruleset`."""

    def __init__(self, spec: RuleFile, source: str = "<memory>") -> None:
        self.spec = spec
        self.source = source
        self.profile = spec.profile
        self._prompts = {k: p.build() for k, p in spec.prompts.items()}
        self.rules: tuple[CompiledRule, ...] = tuple(self._compile(r) for r in spec.rule)
        self.counters = frozenset(c for r in spec.rule for c in r.count)
        self.site_counters = frozenset(
            [c for r in spec.rule for c in r.count_site]
            + [r.when.slot_count_at_least.counter for r in spec.rule
               if r.when.slot_count_at_least is not None])

    def _compile(self, r: RuleSpec) -> CompiledRule:
        reason = Reason(r.accept) if r.accept is not None else r.deny
        assert reason is not None
        prompt = r.prompt.build() if r.prompt else self.prompt_for(reason, r.product)
        decision = Decision(accepted=reason.accepting, reason=reason, product=r.product,
                            amount_cents=r.amount_cents if reason.accepting else 0,
                            prompt=prompt, rule_id=r.id, counters=tuple(r.count))
        return CompiledRule(r.id, tuple(_compile_when(r.when)), decision, tuple(r.count_site),
                            r.queue)

    def prompt_for(self, reason: Reason, product: str = "") -> Prompt:
        """The prompt for a product (if configured) or else a reason."""
        if product and product in self._prompts:
            return self._prompts[product]
        if reason.value in self._prompts:
            return self._prompts[reason.value]
        return _DEFAULT_PROMPTS.get(reason, Prompt(reason.value, "ok" if reason.accepting
                                                   else "deny"))

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
        for v in self.spec.vector:
            d = self.evaluate(v.facts())
            wrong = []
            if d.reason != v.expect_reason:
                wrong.append(f"reason {d.reason.value} != {v.expect_reason.value}")
            if v.expect_product is not None and d.product != v.expect_product:
                wrong.append(f"product {d.product!r} != {v.expect_product!r}")
            if v.expect_amount_cents is not None and d.amount_cents != v.expect_amount_cents:
                wrong.append(f"amount {d.amount_cents} != {v.expect_amount_cents}")
            if v.expect_rule is not None and d.rule_id != v.expect_rule:
                wrong.append(f"rule {d.rule_id!r} != {v.expect_rule!r}")
            if wrong:
                failures.append(f"vector {v.name!r}: " + "; ".join(wrong))
        return failures


def load_ruleset(path: str | Path, *, text: str | None = None) -> RuleSet:
    """Load, validate, compile and vector-check a rule/profile file.

    Raises :class:`~agent.tomlconf.ConfigFileError` (file, line, key) for an invalid file
    and :class:`RuleSetError` if the file has no vectors or any vector fails: such a rule
    set is never activated.
    """
    spec = load_toml_model(path, RuleFile, text=text)
    rs = RuleSet(spec, str(path))
    if not spec.vector:
        raise RuleSetError(f"{path}: rule set has no test vectors; refusing to activate it")
    failures = rs.check_vectors()
    if failures:
        raise RuleSetError(f"{path}: {len(failures)} test vector(s) failed; refusing to "
                           "activate:\n  " + "\n  ".join(failures))
    return rs


def age_on(birth: date, today: date) -> int:
    """Age in whole years on ``today`` (a person born 29 Feb ages on 1 Mar in common years)."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
