"""The decision engine: one presentation in, one durably journaled decision out.

:meth:`Engine.handle` resolves the presentation to a credential (cards arrive already
read; codes are verified here), looks up the facts locally (store, journal counters,
clock), evaluates the rule set, and appends the journal record — all before returning,
so whoever acts on the decision acts on something already on disk. Nothing here touches
the network. Any unexpected error becomes a journaled ``internal_error`` denial; if even
the journal fails, the outcome has no record and must not open anything.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from agent.clock import clock_quality as system_clock_quality
from agent.journal import Journal, JournalError, parse_utc
from agent.model import (
    ClockQuality,
    Credential,
    Decision,
    JournalRecord,
    Location,
    Presentation,
    PresentationKind,
    Prompt,
    Reason,
    Rejection,
)
from agent.rules import Facts, RuleSet, age_on
from agent.store import PolicyStore
from agent.timebase import TimeBase

__all__ = ["CodeVerifierLike", "Engine", "Outcome"]

log = logging.getLogger(__name__)


class CodeVerifierLike(Protocol):
    """What the engine needs from a dynamic-code verifier (see :mod:`agent.codes`)."""

    def verify(self, text: str, *, now: float | None = None,
               clock_quality: str = "synced") -> Credential | Rejection: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision and its journal record (None only when nothing may be acted on)."""

    decision: Decision
    record: JournalRecord | None
    credential: Credential | None = None
    presentation: Presentation | None = None
    counters: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    """The counter deltas committed with the record ((holder or SITE, counter, day) → +n)."""

    @property
    def actionable(self) -> bool:
        """True when the decision is journaled (or is a non-event such as "tap again")."""
        return self.record is not None or self.decision.reason is Reason.CARD_REMOVED


_FAILSAFE = Prompt("设备故障 请稍后", "error")
SITE = "*"
"""Holder key of terminal-wide counters (time-slot capacity, queue numbers)."""


@functools.lru_cache(maxsize=8)
def _epoch(stamp: str) -> float:
    """Epoch seconds of an RFC 3339 stamp (cached: the policy expiry is checked per tap)."""
    return parse_utc(stamp)


class Engine:
    """Decides presentations for one terminal.

    ``ruleset``/``store`` may be swapped at runtime by policy updates (:meth:`swap`);
    ``clock`` returns epoch seconds; ``gate_ok`` tells whether the gate can open.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        store: PolicyStore,
        journal: Journal,
        *,
        location: Location = Location(),
        verifier: CodeVerifierLike | None = None,
        clock: Callable[[], float] = time.time,
        clock_quality: Callable[[], ClockQuality] = system_clock_quality,
        gate_ok: Callable[[], bool] = lambda: True,
        timebase: TimeBase | None = None,
        disk_full: Callable[[], bool] | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.store = store
        self.journal = journal
        self.location = location
        self.verifier = verifier
        self._clock = clock
        self._clock_quality = clock_quality
        self._gate_ok = gate_ok
        self._timebase = timebase
        self._on_disk_full = disk_full
        self.out_of_service = ""
        """Why the terminal decides nothing now ("disk_full"), or "" when in service."""
        self._journal_ok = True
        self.journal_failures = 0
        """Appends the journal refused (status heartbeat)."""
        if timebase is not None:
            self._clock = timebase.now
        self._tz = ZoneInfo(ruleset.profile.timezone)
        self._between = threading.RLock()

    def between_taps(self) -> AbstractContextManager[Any]:
        """A context in which no presentation is being decided and no event journaled
        (re-entrant). The policy applier switches the store's snapshot and the rules
        inside it, so every decision uses one bundle's data *and* rules, and journals
        that bundle's label."""
        return self._between

    def swap(self, *, ruleset: RuleSet | None = None, verifier: CodeVerifierLike | None = None,
             store: PolicyStore | None = None) -> None:
        """Replace rules, verifier or store atomically (attribute assignment) between taps."""
        if ruleset is not None:
            self._tz = ZoneInfo(ruleset.profile.timezone)
            self.ruleset = ruleset
        if verifier is not None:
            self.verifier = verifier
        if store is not None:
            self.store = store

    # ---------------------------------------------------------------------------------
    def handle(self, p: Presentation) -> Outcome:
        """Decide ``p`` and journal the decision durably. Never raises."""
        with self._between:
            return self._handle(p)

    def _now(self) -> float:
        """The decision time; first journals any wall-clock jump the time base saw
        (``clock_jump``, before the record it would otherwise have misdated)."""
        now = self._clock()
        if self._timebase is not None:
            for jump in self._timebase.take_jumps():
                log.warning("wall clock %s by %.0f s (%s)", "jumped" if jump.followed else
                            "left the decision time", jump.offset_s,
                            "followed: first synchronisation" if jump.followed else
                            "not followed")
                self._journal_event_at("clock_jump", jump.fields(), None, now)
        return now

    @property
    def journal_failing(self) -> bool:
        """True from a refused append until the next one that lands."""
        return not self._journal_ok

    def resume(self) -> None:
        """Back in service after :attr:`out_of_service` (journals ``in_service``)."""
        with self._between:
            if self.out_of_service:
                reason, self.out_of_service = self.out_of_service, ""
                self._journal_event_at("in_service", {"after": reason}, None, self._now())

    def _go_out_of_service(self, reason: str, now: float) -> None:
        if not self.out_of_service:
            self.out_of_service = reason
            self._journal_event_at("out_of_service", {"reason": reason}, None, now)

    def _handle(self, p: Presentation) -> Outcome:
        now = self._now()
        if self.out_of_service:      # the failsafe prompt; nothing decided, nothing opens
            return Outcome(self._deny(Reason.INTERNAL_ERROR, f"pre:{self.out_of_service}",
                                      _FAILSAFE), None, None, p)
        quality = self._clock_quality()
        ruleset, store = self.ruleset, self.store
        cred: Credential | None = None
        try:
            resolved = self._resolve(p, now, quality)
            if isinstance(resolved, Rejection):
                return self._reject(p, resolved, now, quality)
            cred = resolved
            facts, today, slot = self._facts(cred, now, ruleset, store, p.service)
            rule = ruleset.match(facts)
            decision = rule.decision
            if decision.accepted and not facts.gate_in_service:
                # safety net for profiles without a gate rule: never take a fare or an
                # entry for a gate that will not open
                decision = self._deny(Reason.GATE_OUT_OF_SERVICE, "pre:gate-out-of-service")
            if facts.policy_stale and ruleset.profile.stale_policy == "deny_all":
                decision = self._deny(Reason.POLICY_STALE, "pre:stale-policy")
        except Exception as err:  # a bug or a broken store must not crash the daemon
            log.exception("deciding a %s presentation from %s failed", p.kind, p.source)
            return self._reject(p, Rejection(Reason.INTERNAL_ERROR, type(err).__name__),
                                now, quality)
        day = today.isoformat()
        counters = {(cred.holder_key, c, day): 1 for c in decision.counters}
        prompt = decision.prompt
        extra: dict[str, Any] = {}
        if decision.accepted:
            counters.update({(SITE, f"{c}@{slot}", day): 1 for c in rule.count_site})
            if rule.queue:   # single worker thread: read-then-increment cannot race
                number = self.journal.count(SITE, f"queue:{rule.queue}", day) + 1
                counters[(SITE, f"queue:{rule.queue}", day)] = 1
                extra["queue_no"] = f"{rule.queue}{number:03d}"
                prompt = prompt.with_queue(extra["queue_no"])
        decision = replace(decision, prompt=prompt, policy_version=store.info.label)
        last_tap = ((cred.credential_key, self.location.passback_scope)
                    if decision.reason is Reason.ACCEPTED else None)
        fields = self._fields(p, quality, decision, cred.journal_fields(), "",
                              policy_stale=facts.policy_stale)
        fields.update(extra)
        if p.service:
            fields["service"] = p.service
        record = self._append(fields, counters, last_tap, now)
        if record is None:
            return self._journal_failed(p, cred)
        return Outcome(decision, record, cred, p, counters)

    def journal_event(self, event: str, fields: dict[str, Any] | None = None, *,
                      undo: Outcome | None = None) -> JournalRecord | None:
        """Journal a non-decision event (``not_entered``, ``fire_alarm``, ``gate_fault``).

        ``undo`` is an accepted outcome whose counters this event gives back in the same
        transaction (a visitor who did not pass the gate keeps the day's entry and frees
        the time slot); issued queue numbers are never given back. Returns the record, or
        None if the journal failed (logged).
        """
        with self._between:
            return self._journal_event(event, fields, undo)

    def _journal_event(self, event: str, fields: dict[str, Any] | None,
                       undo: Outcome | None) -> JournalRecord | None:
        return self._journal_event_at(event, fields, undo, self._now())

    def _journal_event_at(self, event: str, fields: dict[str, Any] | None,
                          undo: Outcome | None, now: float) -> JournalRecord | None:
        base: dict[str, Any] = {
            "event": event, "profile": self.ruleset.profile.name,
            "loc": self.location.as_dict(), "clock": self._clock_quality().value,
            "policy": self.store.info.label}
        base.update(fields or {})
        counters = None
        if undo is not None and undo.record is not None:
            base["ref_seq"] = undo.record.seq
            d = undo.decision   # settlement: what the entry not made takes back (§1.4)
            if d.accepted and (d.amount_cents or d.category):
                base["undo"] = {"product": d.product, "amount": d.amount_cents,
                                "category": d.category, "fare_std": d.fare_std_cents}
            counters = {k: -n for k, n in undo.counters.items()
                        if not k[1].startswith("queue:")}
        return self._append(base, counters, None, now)

    # ---------------------------------------------------------------------------------
    def _resolve(self, p: Presentation, now: float, quality: ClockQuality
                 ) -> Credential | Rejection:
        if p.kind is PresentationKind.CARD:
            if p.credential is not None:
                return p.credential
            return p.rejection or Rejection(Reason.READ_ERROR, "card presentation without data")
        if p.text is None:
            return Rejection(Reason.MALFORMED_CODE, "empty code")
        if self.verifier is None:
            return Rejection(Reason.UNSUPPORTED_CODE, "no code verifier configured")
        return self.verifier.verify(p.text, now=now, clock_quality=quality.value)

    def _facts(self, cred: Credential, now: float, ruleset: RuleSet, store: PolicyStore,
               service: str) -> tuple[Facts, date, str]:
        local = datetime.fromtimestamp(now, self._tz)
        today = local.date()
        minutes = local.hour * 60 + local.minute
        start = minutes - minutes % ruleset.profile.slot_minutes
        slot = f"{start // 60:02d}:{start % 60:02d}"
        site = {c: self.journal.count(SITE, f"{c}@{slot}", today.isoformat())
                for c in ruleset.site_counters}
        hot = store.hotlisted(cred.credential_key, cred.holder_key)
        ents = store.entitlements(cred.holder_key, today) | cred.categories
        expired = ((cred.valid_until is not None and cred.valid_until < today)
                   or (cred.valid_from is not None and cred.valid_from > today))
        last = self.journal.last_tap(cred.credential_key, self.location.passback_scope)
        counters = {c: self.journal.count(cred.holder_key, c, today.isoformat())
                    for c in ruleset.counters}
        stale = bool(store.info.expires) and _epoch(store.info.expires) < now
        facts = Facts(
            now=local, kind=cred.kind, hotlisted=hot is not None, expired=expired,
            age=age_on(cred.birth_date, today) if cred.birth_date else None,
            entitlements=ents, since_last_tap_s=None if last is None else now - last,
            counters=counters, policy_stale=stale, gate_in_service=self._gate_ok(),
            site_counters=site, service=service,
        )
        return facts, today, slot

    def _deny(self, reason: Reason, rule_id: str, prompt: Prompt | None = None) -> Decision:
        """A denial decided before (or instead of) the rules, under the current policy."""
        return Decision(False, reason, prompt=prompt or self.ruleset.prompt_for(reason),
                        rule_id=rule_id, policy_version=self.store.info.label)

    def _journal_failed(self, p: Presentation, cred: Credential | None) -> Outcome:
        """Nothing could be journaled: a failsafe prompt and no record, so nothing acts."""
        return Outcome(self._deny(Reason.INTERNAL_ERROR, "pre:journal-failed", _FAILSAFE),
                       None, cred, p)

    def _reject(self, p: Presentation, r: Rejection, now: float, quality: ClockQuality
                ) -> Outcome:
        decision = self._deny(r.reason, f"pre:{r.reason.value}")
        if not r.journal:
            return Outcome(decision, None, None, p)
        cred = {"kind": r.kind or ("ssc_card" if p.kind is PresentationKind.CARD else "code"),
                "credential_key": r.credential_key, "holder_key": r.holder_key}
        record = self._append(self._fields(p, quality, decision, cred, r.detail), None, None, now)
        if record is None:
            return self._journal_failed(p, None)
        return Outcome(decision, record, None, p)

    def _fields(self, p: Presentation, quality: ClockQuality, d: Decision,
                cred: dict[str, Any], detail: str, *, policy_stale: bool = False
                ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "profile": self.ruleset.profile.name, "loc": self.location.as_dict(),
            "clock": quality.value, "src": p.source, "pres": p.kind.value, "cred": cred,
            "accepted": d.accepted, "reason": d.reason.value, "product": d.product,
            "amount": d.amount_cents, "rule": d.rule_id, "policy": d.policy_version,
        }
        if d.accepted:   # settlement (docs/protocol.md §1.4): category, replaced fare
            fields["category"] = d.category
            if d.category:
                fields["fare_std"] = d.fare_std_cents
        if detail:
            fields["detail"] = detail[:200]
        if policy_stale:
            fields["policy_stale"] = True
        return fields

    def _append(self, fields: dict[str, Any], counters: dict[tuple[str, str, str], int] | None,
                last_tap: tuple[str, str] | None, now: float) -> JournalRecord | None:
        try:
            record = self.journal.append(fields, counters=counters, last_tap=last_tap, at=now)
        except (JournalError, ValueError) as err:
            if (isinstance(err, JournalError) and err.disk_full
                    and self._on_disk_full is not None and self._on_disk_full()):
                # the reserve was released: this record, then the out-of-service event
                retried = self._append(fields, counters, last_tap, now)
                self._go_out_of_service("disk_full", now)
                return retried
            self.journal_failures += 1
            if self._journal_ok:     # one line per change of state, not one per tap
                self._journal_ok = False
                log.critical("journal append failed: decision not acted on", exc_info=True)
            else:
                log.debug("journal append failed again: %s", err)
            return None
        if not self._journal_ok:
            self._journal_ok = True
            log.warning("journal writable again after %d refused appends",
                        self.journal_failures)
        return record
