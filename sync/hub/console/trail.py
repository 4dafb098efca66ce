"""用卡轨迹: one holder's or one card's trail from the hub store, looked up by the raw
identifier that an authorised person types in.

The identifier is hashed here with the deployment's pseudonymisation key (the same
HMAC the terminals and ``ykt hub policy build`` use, :class:`agent.pseudonym.Pseudonymizer`)
and forgotten: only the keyed hash reaches the query and only the masked form
(``3701**********1234``) reaches the audit log. The key comes from a credential
(``$YKT_PSEUDONYM_KEY`` or ``$CREDENTIALS_DIRECTORY/pseudonym-key``), never the database.

Every lookup needs a reason, is rate-limited per user (:data:`LOOKUPS_PER_MINUTE`) and
is audit-logged *before* the rows are read, refused ones included (see
``docs/security.md``, "用卡轨迹").

The query matches the keyed hash in the canonical record body (``"holder_key":"…"`` or
``"credential_key":"…"``): the same SQL on SQLite and PostgreSQL, a scan of the records
table (≈1 s per few million records; an expression index would need a schema change of
both stores).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from agent.errors import YktError
from agent.journal import parse_utc
from agent.pseudonym import Pseudonymizer, mask_id
from sync.hub.console.accounts import Accounts
from sync.hub.console.storequery import read
from sync.hub.store import HubStore, decision_fields

__all__ = ["LOOKUPS_PER_MINUTE", "BEIJING", "Identifier", "TrailRefused", "TrailRow",
           "load_pseudonymizer", "lookup_trail", "parse_identifier", "trail_rows"]

LOOKUPS_PER_MINUTE = 10
"""Trail lookups one user may make in any 60 s (refused ones count too)."""

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
"""Beijing time (UTC+8, no daylight saving since 1991): how trails are shown."""

ROW_LIMIT = 1000


class TrailRefused(YktError, ValueError):
    """A lookup refused: no reason, a malformed identifier, over the rate limit, or no key.
    The message says what to do and never contains the identifier."""


@dataclass(frozen=True, slots=True)
class Identifier:
    """A typed-in identifier reduced to what may be kept: kind, keyed hash, masked form."""

    kind: str          # "holder" (社会保障号码) or "card" (卡识别码)
    key: str           # keyed hash, 32 hex
    masked: str        # e.g. 3701**********1234


@dataclass(frozen=True, slots=True)
class TrailRow:
    """One record of a trail; ``time_bj`` in Beijing time, ``place`` route/stop or site/gate."""

    time_utc: str
    time_bj: str
    terminal: str
    place: str
    product: str
    decision: str
    amount_fen: int | None
    seq: int


def load_pseudonymizer() -> Pseudonymizer:
    """The deployment's pseudonymiser from ``$YKT_PSEUDONYM_KEY`` or
    ``$CREDENTIALS_DIRECTORY/pseudonym-key`` (hex). Raises :class:`TrailRefused` when
    neither is set or the key is not hex: there is no demo fallback for lookups."""
    from agent.keys import SecretError, read_secret

    try:
        secret = read_secret("pseudonym-key", "YKT_PSEUDONYM_KEY")
        if not secret:
            raise SecretError("no pseudonymisation key")
        return Pseudonymizer(bytes.fromhex(secret))
    except (ValueError, OSError) as err:
        raise TrailRefused(f"trail lookups need the deployment's pseudonymisation key "
                           f"(hex) in $YKT_PSEUDONYM_KEY or $CREDENTIALS_DIRECTORY/"
                           f"pseudonym-key ({err})") from None


def parse_identifier(text: str, pseudo: Pseudonymizer) -> Identifier:
    """An 18-character 社会保障号码 (holder; its GB 11643 check digit verified) or a
    32-hex-digit 卡识别码 (card), spaces ignored — the checks of ``ykt hub policy build``
    (:mod:`sync.hub.policy_sources`). Raises :class:`TrailRefused` (never quoting the
    input) for anything else."""
    from sync.hub.policy_sources import check_card_id, check_ssn

    s = re.sub(r"\s+", "", text).upper()
    try:
        if len(s) == 18 or "E+" in s:
            ssn = check_ssn(s)
            return Identifier("holder", pseudo.holder_key(ssn), mask_id(ssn))
        card = check_card_id(s)
        return Identifier("card", pseudo.card_key(card), mask_id(card))
    except ValueError as err:
        raise TrailRefused(f"not a 社会保障号码 (18 characters) or a 卡识别码 (32 hex "
                           f"digits): {err}") from None


def _place(body: dict[str, Any]) -> str:
    loc = body.get("loc", body.get("location"))
    if not isinstance(loc, dict):
        return ""
    return " / ".join(f"{k} {loc[k]}" for k in sorted(loc) if k != "operator" and isinstance(loc[k], str | int))


def _row(terminal: str, seq: int, text: str) -> TrailRow:
    body = json.loads(text)
    product, reason = decision_fields(body)
    stamp = str(body.get("time", ""))
    try:
        bj = datetime.fromtimestamp(parse_utc(stamp), UTC).astimezone(BEIJING)
        shown = bj.strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        shown = ""
    dec = body.get("decision") if isinstance(body.get("decision"), dict) else {}
    amount = body.get("amount", dec.get("amount_cents") if isinstance(dec, dict) else None)
    return TrailRow(stamp, shown, terminal, _place(body), product, reason,
                    amount if isinstance(amount, int) else None, seq)


def trail_rows(store: HubStore, ident: Identifier, limit: int = ROW_LIMIT) -> list[TrailRow]:
    """The records of ``ident`` in ``store`` (SQLite or PostgreSQL), oldest first, at most
    ``limit``."""
    field = "holder_key" if ident.kind == "holder" else "credential_key"
    pattern = f'%"{field}":"{ident.key}"%'      # hex key: no LIKE wildcards inside
    rows = read(store, "SELECT terminal, seq, body FROM records WHERE body LIKE ? "
                       "ORDER BY received, terminal, seq LIMIT ?", (pattern, limit))
    out = [_row(t, s, b) for t, s, b in rows]
    out.sort(key=lambda r: (r.time_utc, r.terminal, r.seq))
    return out


def lookup_trail(store: HubStore, accounts: Accounts, pseudo: Pseudonymizer, *, user: str,
                 identifier: str, reason: str, origin: str,
                 now: float | None = None) -> tuple[Identifier, list[TrailRow]]:
    """The whole audited lookup: reason required, identifier parsed and hashed, the rate
    limit checked, the lookup audit-logged (masked target, ``outcome`` with the number of
    rows or why it was refused), then the rows read. Raises :class:`TrailRefused`."""
    reason = reason.strip()
    if len(reason) < 4:
        accounts.audit(user, "trail", reason=reason, outcome="refused: no reason",
                       origin=origin, at=now)
        raise TrailRefused("a reason is required for every trail lookup (e.g. the case "
                           "or ticket number)")
    try:
        ident = parse_identifier(identifier, pseudo)
    except TrailRefused:
        accounts.audit(user, "trail", reason=reason, outcome="refused: malformed identifier",
                       origin=origin, at=now)
        raise
    if accounts.lookups_within(user, "trail", 60.0, now) >= LOOKUPS_PER_MINUTE:
        accounts.audit(user, "trail", target=ident.masked, reason=reason,
                       outcome="refused: rate limit", origin=origin, at=now)
        raise TrailRefused(f"at most {LOOKUPS_PER_MINUTE} trail lookups a minute per user: "
                           "wait a minute")
    entry = accounts.audit(user, "trail", target=f"{ident.kind} {ident.masked}",
                           reason=reason, outcome="looking up", origin=origin, at=now)
    rows = trail_rows(store, ident)
    accounts.set_outcome(entry, f"ok: {len(rows)} records")
    return ident, rows
