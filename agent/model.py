"""The domain model shared by drivers, the decision engine, the journal and sync.

Every type here is frozen and carries no raw personal data: a :class:`Credential` holds
keyed hashes (see :mod:`agent.pseudonym`) plus the few claims rules need (birth date for
age rules stays in memory only and never reaches the journal or the wire).

The flow of one tap::

    driver ──► Presentation ──► (card read / code verified) ──► Credential | Rejection
                                                                   │
                        Facts (store, counters, clock) ──► decide ─┴─► Decision
                                                                          │
                                            Journal.append ──► JournalRecord ──► actuators

See ``docs/model.md`` for the field-by-field description.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

__all__ = [
    "ClockQuality",
    "Credential",
    "Decision",
    "JournalRecord",
    "Location",
    "Presentation",
    "PresentationKind",
    "Prompt",
    "Reason",
    "Rejection",
]


class Reason(enum.StrEnum):
    """Why a presentation was accepted or denied: the one documented reason-code enum.

    The string values are stable: they are journaled, sent to the hub and reported.
    ``docs/model.md`` lists each with its meaning and default prompt.
    """

    # accepted
    ACCEPTED = "accepted"
    """Accepted; product and amount say what for."""
    ALREADY_PAID = "already_paid"
    """Same credential again within the passback window on the same vehicle: not charged twice."""
    # denied: holder / policy
    HOTLISTED = "hotlisted"
    EXPIRED = "expired"
    NOT_ENTITLED = "not_entitled"
    PASSBACK = "passback"
    LIMIT_REACHED = "limit_reached"
    OUTSIDE_HOURS = "outside_hours"
    CAPACITY_FULL = "capacity_full"
    POLICY_STALE = "policy_stale"
    # denied: dynamic codes
    CODE_EXPIRED = "code_expired"
    CODE_NOT_YET_VALID = "code_not_yet_valid"
    CODE_REPLAYED = "code_replayed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_ISSUER = "unknown_issuer"
    CERT_EXPIRED = "cert_expired"
    MALFORMED_CODE = "malformed_code"
    UNSUPPORTED_CODE = "unsupported_code"
    ONLINE_UNAVAILABLE = "online_unavailable"
    # denied: cards and readers
    CARD_AUTH_FAILED = "card_auth_failed"
    NOT_SSC = "not_ssc"
    MULTIPLE_CARDS = "multiple_cards"
    CARD_REMOVED = "card_removed"
    READ_ERROR = "read_error"
    # denied: the terminal itself
    GATE_OUT_OF_SERVICE = "gate_out_of_service"
    INTERNAL_ERROR = "internal_error"

    @property
    def accepting(self) -> bool:
        """True for the reasons that go with an accepted decision."""
        return self in (Reason.ACCEPTED, Reason.ALREADY_PAID)


class PresentationKind(enum.StrEnum):
    CARD = "card"
    CODE = "code"


class ClockQuality(enum.StrEnum):
    """How far the terminal's wall clock can be trusted when a record was written."""

    SYNCED = "synced"      # NTP/chrony says synchronised
    RTC = "rtc"            # battery-backed RTC, not recently synchronised
    UNSYNCED = "unsynced"  # no time source known good (e.g. after a clock jump)


@dataclass(frozen=True, slots=True)
class Presentation:
    """Something a passenger presented, as a driver saw it.

    ``seen_ns`` is ``time.monotonic_ns()`` at the moment the hardware reported it, so
    latency budgets can be measured from it. For a card, the driver has already read and
    authenticated it (a card must be read while it is in the field) and sets either
    ``credential`` or ``rejection``. For a code, ``text`` holds the scanned text and the
    agent verifies it.
    """

    kind: PresentationKind
    source: str                      # e.g. "pcsc:Virtual PCD 00 00", "camera:/dev/video0", "sim"
    seen_ns: int
    text: str | None = None          # scanned code text (codes only); never logged in full
    credential: Credential | None = None
    rejection: Rejection | None = None
    apdus: int = 0                   # APDUs exchanged (cards), for benchmarks
    service: str = ""                # kiosk: the service type chosen (取号), e.g. "A"


@dataclass(frozen=True, slots=True)
class Credential:
    """A verified credential: who (pseudonymously), from where, valid when, proven how.

    ``credential_key`` identifies this card or code certificate; ``holder_key`` identifies
    the person across cards and codes. Both are keyed hashes (hex, 32 chars) made by
    :class:`agent.pseudonym.Pseudonymizer`; raw 社会保障号码 and names never appear here.
    ``birth_date`` is a claim used by age rules; it is never journaled.
    """

    kind: str                              # "ssc_card" or "qr:<scheme>"
    credential_key: str
    holder_key: str
    region: str = ""                       # issuing region (行政区划代码, 6 digits) if known
    generation: str = ""                   # card generation "1.0"/"2.0"/"3.0" or code scheme version
    valid_from: date | None = None
    valid_until: date | None = None
    birth_date: date | None = None
    categories: frozenset[str] = frozenset()
    authenticated_by: str = ""             # "psam:sm4", "sig:ES256", "sim", ...
    masked_id: str = ""                    # for local display only, e.g. "3701**********1234"
    masked_name: str = ""                  # for local display only, e.g. "张*"
    replay_id: str = ""                    # a dynamic code's id (hex): journaled so the
    replay_until_ms: int = 0               # replay cache is rebuilt after a restart

    def journal_fields(self) -> dict[str, Any]:
        """The fields of this credential that may be journaled and sent (no personal data)."""
        return {
            "kind": self.kind,
            "credential_key": self.credential_key,
            "holder_key": self.holder_key,
            "region": self.region,
            "generation": self.generation,
            "auth": self.authenticated_by,
            **({"code": self.replay_id, "code_until_ms": self.replay_until_ms}
               if self.replay_id else {}),
        }


@dataclass(frozen=True, slots=True)
class Rejection:
    """A presentation that could not become a credential: why, and what to tell the holder.

    ``detail`` is for logs and the journal: it must not contain personal data.
    ``journal`` False means "do not journal this" — only for non-events such as a card
    pulled away mid-read (the holder is asked to tap again; nothing was decided).
    """

    reason: Reason
    detail: str = ""
    kind: str = ""                 # credential kind if known ("ssc_card", "qr:ykt1")
    credential_key: str = ""       # if the credential was identified before it failed
    holder_key: str = ""
    journal: bool = True


@dataclass(frozen=True, slots=True)
class Prompt:
    """What to show and play: a display text, a beep pattern name and an optional voice clip."""

    text: str
    sound: str = "ok"              # beep pattern name, see drivers.prompt
    voice: str = ""                # optional voice clip name, e.g. "elderly", or "number:A001"
    short: str = ""                # the large-text form (half the columns); "" = ``text``

    def with_queue(self, number: str) -> Prompt:
        """This prompt with ``{queue}`` in its text, short form and voice replaced."""
        return Prompt(self.text.replace("{queue}", number), self.sound,
                      self.voice.replace("{queue}", number), self.short.replace("{queue}", number))


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one presentation.

    ``amount_cents`` is the fare or price in fen (0.01 CNY), recorded for account-based
    settlement (0 for free rides); a concession has a ``category`` and the standard fare
    it replaced, ``fare_std_cents`` (what the operator claims, less ``amount_cents``). ``rule_id`` names the rule that decided (or ``"pre:…"``
    for the fixed checks before the rules), ``policy_version`` the policy in force.
    """

    accepted: bool
    reason: Reason
    product: str = ""
    amount_cents: int = 0
    prompt: Prompt = field(default_factory=lambda: Prompt(text=""))
    rule_id: str = ""
    policy_version: str = ""
    counters: tuple[str, ...] = ()  # counters this decision consumes (e.g. daily free rides)
    category: str = ""      # concession category (elderly, disabled, ...); "" if none
    fare_std_cents: int = 0  # the standard fare (fen) a concession replaced: the subsidy base

    def __post_init__(self) -> None:
        if self.accepted != self.reason.accepting:
            raise ValueError(
                f"decision accepted={self.accepted} contradicts reason {self.reason.value!r}"
            )
        if self.amount_cents < 0:
            raise ValueError(f"amount_cents must be >= 0, got {self.amount_cents}")


@dataclass(frozen=True, slots=True)
class Location:
    """Where the terminal is: route/vehicle/stop for buses, site/gate/direction for gates."""

    site: str = ""
    route: str = ""
    vehicle: str = ""
    stop: str = ""
    gate: str = ""
    direction: Literal["in", "out", ""] = ""
    operator: str = ""
    """Who runs the terminal and claims its concessions (settlement; ``docs/protocol.md``)."""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (
            ("site", self.site), ("route", self.route), ("vehicle", self.vehicle),
            ("stop", self.stop), ("gate", self.gate), ("direction", self.direction),
            ("operator", self.operator),
        ) if v}

    @property
    def passback_scope(self) -> str:
        """The scope within which a repeat tap counts as passback (vehicle or gate)."""
        return self.vehicle or self.gate or self.site or "terminal"


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One durable journal entry; ``body`` is exactly what is hashed and sent (see protocol.md).

    ``seq`` is per terminal, starting at 1, with no gaps. ``hash`` is the hex SHA-256 of
    the canonical encoding of ``body`` (which includes ``prev``, the previous hash).
    """

    seq: int
    body: dict[str, Any]
    hash: str

    @property
    def terminal(self) -> str:
        return str(self.body["terminal"])

    @property
    def wall_time(self) -> datetime:
        from agent.journal import parse_utc  # journal imports this module

        return datetime.fromtimestamp(parse_utc(str(self.body["time"])), UTC)
