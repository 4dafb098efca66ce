"""A site's terminals deciding together while they cannot talk: quotas, queue numbers, 预约.

A site (a museum, a scenic area, a service hall) has several terminals. Two of its rules
span them all: a time slot's capacity (two gates must never admit more than the slot
holds) and a hall's queue numbers (two kiosks must never issue the same number on the
same day). Both hold *without* the terminals talking to each other or to the hub
(offline-first): the hub delivers each site's layout as a policy part (``site``) and every
terminal decides its own share of it. ``docs/sites.md`` has the design and its failure
modes.

* **Slot quotas.** Each gate has a weight; its quota of a slot limit ``L`` is
  ``floor(L * w / W)`` (``W`` the sum of the site's weights), so the quotas never add up
  to more than ``L``, whatever ``L`` a settings part sets. The rules keep saying
  ``slot_count_at_least = { counter = "visitors", max = "slot_capacity" }``: the engine
  shows them this gate's own count plus ``L - quota`` (the other gates' shares counted as
  used), so the rule fires when this gate's quota is spent.
* **Queue numbers.** The site's kiosks, in their listed order, interleave one number
  space: with ``K`` kiosks the one at index ``i`` issues ``n*K + i + 1`` for its ``n``-th
  number of the day (A001, A003, … and A002, A004, …). ``n`` is the kiosk's journal
  counter, so a restart continues where it stopped.
* **Reservations (预约).** The ``reservations`` part lists keyed holder hashes with a local
  day and optionally a slot start (``"10:00"``; ``""`` = any time that day). No raw ID
  ever: the hub hashes ``ssn`` with the deployment key as for entitlements.

Parsing never raises anything but ``ValueError`` with a message naming the entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.rules import RuleSet

__all__ = ["MAX_RESERVATIONS", "UNLISTED_QUEUE_BASE", "Reservations", "SiteLayout", "SiteState", "parse_reservations",
           "parse_site", "slot_limits"]

_KEY = re.compile(r"^[0-9a-f]{32}$")
_SLOT = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
UNLISTED_QUEUE_BASE = 901
"""First queue number of a kiosk its site's layout does not list."""
MAX_RESERVATIONS = 2_000_000
"""Most reservation entries one part may hold (memory: ~100 B each)."""


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """One site of the ``site`` part: its id, its terminals in order, their weights."""

    site: str
    terminals: tuple[str, ...]
    weights: Mapping[str, int] = field(default_factory=dict)
    previous: Mapping[str, int] | None = None
    """The weights before the last change while it is not settled (every gate of the site
    has not yet applied it): each gate keeps the smaller of its two quotas."""

    def index(self, terminal: str) -> int:
        """``terminal``'s position (its number space); ``ValueError`` if not listed."""
        return self.terminals.index(terminal)

    def quota(self, terminal: str, limit: int) -> int:
        """``terminal``'s share of ``limit`` (a whole number). The shares of one layout sum
        to ≤ limit; during a change, any mix of gates on the old and the new layout does
        too, because a gate on the new one keeps min(old, new) (joint quotas)."""
        share = _share(self.weights, terminal, limit)
        if self.previous is not None:
            share = min(share, _share(self.previous, terminal, limit))
        return share


def _share(weights: Mapping[str, int], terminal: str, limit: int) -> int:
    total = sum(weights.values())
    return 0 if total <= 0 else limit * weights.get(terminal, 0) // total


def _weights(v: Any, where: str) -> dict[str, int]:
    if not isinstance(v, dict) or not all(
            isinstance(k, str) and _ID.match(k) and isinstance(w, int)
            and not isinstance(w, bool) and 0 <= w <= 10**6 for k, w in v.items()):
        raise ValueError(f"site: {where} must map terminal ids to whole numbers 0..1000000")
    return v


def parse_site(raw: bytes) -> dict[str, SiteLayout]:
    """The ``site`` part (JSON ``{"sites": [{"site", "terminals", "weights",
    "previous"}]}``; ``previous`` = the full weights of the layout before an unsettled
    change) as terminal id → its :class:`SiteLayout`. Raises ``ValueError`` naming the
    fault: a terminal in two sites, a weight for a terminal not listed, a negative weight."""
    doc = _json(raw, "site")
    sites = doc.get("sites")
    if not isinstance(sites, list) or set(doc) - {"sites"}:
        raise ValueError("site: expected {\"sites\": [...]}")
    out: dict[str, SiteLayout] = {}
    for n, s in enumerate(sites):
        if not isinstance(s, dict) or set(s) - {"site", "terminals", "weights", "previous"}:
            raise ValueError(f"site: sites[{n}] must be an object of site, terminals, "
                             "weights, previous")
        name, terms, weights = s.get("site"), s.get("terminals"), s.get("weights", {})
        if not isinstance(name, str) or not _ID.match(name):
            raise ValueError(f"site: sites[{n}].site must be an id")
        if (not isinstance(terms, list) or not terms
                or not all(isinstance(t, str) and _ID.match(t) for t in terms)
                or len(set(terms)) != len(terms)):
            raise ValueError(f"site: {name}: terminals must be distinct terminal ids")
        weights = _weights(weights, f"{name}: weights")
        previous = (None if s.get("previous") is None
                    else _weights(s["previous"], f"{name}: previous"))
        stray = set(weights) - set(terms)
        if stray:
            raise ValueError(f"site: {name}: weights for unlisted terminals {sorted(stray)}")
        layout = SiteLayout(name, tuple(terms), {t: weights.get(t, 1) for t in terms},
                            previous)
        for t in terms:
            if t in out:
                raise ValueError(f"site: terminal {t} is in {out[t].site} and {name}")
            out[t] = layout
    return out


class Reservations:
    """Who reserved which day and slot (keyed holder hashes only)."""

    def __init__(self, entries: set[tuple[str, str, str]]) -> None:
        self._entries = frozenset(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, holder_key: str, day: date, slot: str) -> bool:
        """True if ``holder_key`` reserved ``day`` (any time) or ``day`` at ``slot``."""
        d = day.isoformat()
        return (holder_key, d, "") in self._entries or (holder_key, d, slot) in self._entries


def parse_reservations(raw: bytes) -> Reservations:
    """The ``reservations`` part (JSON ``{"reservations": [[holder_key, "YYYY-MM-DD",
    "HH:MM" or ""], …]}``). Raises ``ValueError`` naming the first bad entry."""
    doc = _json(raw, "reservations")
    rows = doc.get("reservations")
    if not isinstance(rows, list) or set(doc) - {"reservations"}:
        raise ValueError("reservations: expected {\"reservations\": [...]}")
    if len(rows) > MAX_RESERVATIONS:
        raise ValueError(f"reservations: {len(rows)} entries, at most {MAX_RESERVATIONS}")
    entries: set[tuple[str, str, str]] = set()
    for n, r in enumerate(rows):
        if (not isinstance(r, list) or len(r) != 3 or not all(isinstance(x, str) for x in r)
                or not _KEY.match(r[0]) or (r[2] and not _SLOT.match(r[2]))):
            raise ValueError(f"reservations[{n}]: expected [holder_key (32 hex), "
                             "day, slot 'HH:MM' or '']")
        try:
            date.fromisoformat(r[1])
        except ValueError:
            raise ValueError(f"reservations[{n}]: day {r[1]!r} is not YYYY-MM-DD") from None
        entries.add((r[0], r[1], r[2]))
    return Reservations(entries)


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{what}: not JSON: {type(err).__name__}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{what}: expected a JSON object")
    return doc


def slot_limits(ruleset: RuleSet) -> dict[str, int]:
    """Site counter → the smallest slot limit a rule of ``ruleset`` sets for it
    (``slot_count_at_least``, settings resolved)."""
    limits: dict[str, int] = {}
    for i, r in enumerate(ruleset.spec.rule):
        w = r.when.slot_count_at_least
        if w is not None:
            n = ruleset.settings.number(w.max, ("rule", i, "when", "slot_count_at_least"))
            limits[w.counter] = min(n, limits.get(w.counter, n))
    return limits


class SiteState:
    """What the engine asks of the site this terminal belongs to (replaced whole on each
    policy apply; immutable once built, so a tap reads one consistent state).

    ``layout`` None: the terminal is in no site (its own slot counts and numbers, as
    before). ``reservations`` None: the site takes no reservations (the rules see
    ``reserved`` as None and a ``reserved = false`` rule never matches).
    """

    def __init__(self, terminal: str, layout: SiteLayout | None,
                 reservations: Reservations | None) -> None:
        self.terminal = terminal
        self.layout = layout
        self.reservations = reservations
        self._limits: tuple[RuleSet, dict[str, int]] | None = None

    def slot_counts(self, counts: dict[str, int], ruleset: RuleSet) -> dict[str, int]:
        """``counts`` (this terminal's own slot counts) as the rules must see them: plus
        ``limit - quota`` for each limited counter, so a rule fires once the quota is used."""
        if self.layout is None:
            return counts
        cached = self._limits
        if cached is None or cached[0] is not ruleset:   # the rules were swapped
            cached = self._limits = (ruleset, slot_limits(ruleset))
        out = dict(counts)
        for counter, limit in cached[1].items():
            quota = self.layout.quota(self.terminal, limit)
            out[counter] = out.get(counter, 0) + (limit - quota)
        return out

    def queue_number(self, issued: int) -> int:
        """The number for this kiosk's ``issued``+1-th ticket of the day (1-based). A
        terminal its site's layout does not list yet issues from 901 up, a space the
        listed kiosks reach only after 900 numbers a day between them."""
        if self.layout is None:
            return issued + 1
        if self.terminal not in self.layout.terminals:
            return UNLISTED_QUEUE_BASE + issued
        k = len(self.layout.terminals)
        return issued * k + self.layout.index(self.terminal) + 1

    def reserved(self, holder_key: str, day: date, slot: str) -> bool | None:
        """Whether the holder reserved now; None when the site takes no reservations."""
        if self.reservations is None:
            return None
        return self.reservations.holds(holder_key, day, slot)
