"""Console accounts, roles and the audit log: one SQLite file of their own.

The console's accounts never live in the hub's record store: the store is shared by hub
instances and backed up with the journals; the accounts file holds password hashes and
the audit log, and is readable by the console only (created 0600).

Passwords are hashed with **Argon2id** (``argon2-cffi``, RFC 9106, the OWASP first pick:
memory-hard, parameters and salt in the PHC string, :meth:`needs_rehash` when the
parameters change). A password never comes from an argument, only stdin or a prompt
(:mod:`sync.hub.console.cli`).

The audit log (``audit`` table) records every change made through the console or the
console CLI and every 用卡轨迹 lookup: who, when (UTC seconds), what (``action``), on what
(``target``, masked — never a raw card number or 社会保障号码), why (``reason``) and the
outcome. The same table is the per-user rate limit of trail lookups
(:meth:`Accounts.lookups_within`), so several console processes share one limit.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from agent.errors import YktError

__all__ = ["ROLES", "Account", "AccountError", "Accounts", "AuditEntry", "may"]

ROLES = ("viewer", "hotlist_operator", "policy_publisher", "auditor")
"""Console roles. Every role may view; the others add one power each."""

_POWERS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"view"}),
    "hotlist_operator": frozenset({"view", "hotlist"}),
    "policy_publisher": frozenset({"view", "publish"}),
    "auditor": frozenset({"view", "trail", "audit"}),
}

_NAME = re.compile(r"[a-z][a-z0-9._-]{1,31}")
MIN_PASSWORD = 12
"""Shortest password accepted, characters (NIST SP 800-63B asks at least 8; 12 here)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT NOT NULL,
    created REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT 'ok', origin TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_user_action ON audit (user, action, at);
CREATE TABLE IF NOT EXISTS published (
    channel TEXT PRIMARY KEY, version INTEGER NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL
) WITHOUT ROWID;
"""


class AccountError(YktError, ValueError):
    """A bad account name, role or password, or an unknown account."""


def may(role: str, power: str) -> bool:
    """Whether ``role`` holds ``power`` (``view``, ``hotlist``, ``publish``, ``trail``,
    ``audit``)."""
    return power in _POWERS.get(role, frozenset())


@dataclass(frozen=True, slots=True)
class Account:
    """A console account (never its hash)."""

    name: str
    role: str
    created: float
    disabled: bool


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit line; ``at`` is UTC seconds since the epoch."""

    id: int
    at: float
    user: str
    action: str
    target: str
    reason: str
    outcome: str
    origin: str


class Accounts:
    """The accounts and audit SQLite file at ``path`` (created 0600, WAL). Thread-safe.

    Raises ``OSError``/``sqlite3.Error`` when the file cannot be opened."""

    def __init__(self, path: str | Path, *, hasher: PasswordHasher | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._dummy = ""     # made on first use: an unknown user costs one verify too

    def close(self) -> None:
        """Release the file. Safe to call twice."""
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    # -- accounts ---------------------------------------------------------------------
    def add(self, name: str, role: str, password: str) -> Account:
        """Create account ``name`` with ``role``. Raises :class:`AccountError` for a bad
        name (lowercase letters, digits, ``._-``, 2–32 characters), an unknown role, a
        password shorter than :data:`MIN_PASSWORD`, or an existing name."""
        if not _NAME.fullmatch(name):
            raise AccountError(f"account name {name!r}: 2-32 of a-z 0-9 . _ -, "
                               "starting with a letter")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
        _check_password(password)
        now = time.time()
        with self._lock:
            try:
                self._db.execute("INSERT INTO accounts VALUES (?,?,?,?,0)",
                                 (name, role, self._hasher.hash(password), now))
            except sqlite3.IntegrityError:
                raise AccountError(f"account {name!r} exists (remove it first, or use "
                                   "passwd / role)") from None
        return Account(name, role, now, False)

    def set_password(self, name: str, password: str) -> None:
        """Replace ``name``'s password. Raises :class:`AccountError`."""
        _check_password(password)
        self._update(name, "pw_hash", self._hasher.hash(password))

    def set_role(self, name: str, role: str) -> None:
        """Change ``name``'s role (effective on its next request). Raises
        :class:`AccountError`."""
        if role not in ROLES:
            raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
        self._update(name, "role", role)

    def remove(self, name: str) -> None:
        """Delete ``name`` (its sessions stop working on their next request)."""
        with self._lock:
            if self._db.execute("DELETE FROM accounts WHERE name=?", (name,)).rowcount == 0:
                raise AccountError(f"no account {name!r}")

    def _update(self, name: str, column: str, value: str) -> None:
        with self._lock:
            cur = self._db.execute(f"UPDATE accounts SET {column}=? WHERE name=?",
                                   (value, name))
            if cur.rowcount == 0:
                raise AccountError(f"no account {name!r}")

    def get(self, name: str) -> Account | None:
        """The enabled account ``name``, or None."""
        with self._lock:
            row = self._db.execute("SELECT name, role, created, disabled FROM accounts "
                                   "WHERE name=? AND NOT disabled", (name,)).fetchone()
        return None if row is None else Account(row[0], row[1], row[2], bool(row[3]))

    def all(self) -> list[Account]:
        """Every account, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, role, created, disabled FROM accounts "
                                    "ORDER BY name").fetchall()
        return [Account(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def verify(self, name: str, password: str) -> Account | None:
        """The account if ``password`` is ``name``'s, else None (same cost either way).
        A hash made with older parameters is replaced on success."""
        with self._lock:
            row = self._db.execute("SELECT pw_hash FROM accounts WHERE name=? AND NOT "
                                   "disabled", (name,)).fetchone()
        if row is None and not self._dummy:
            self._dummy = self._hasher.hash("not a password of anyone here")
        stored = row[0] if row else self._dummy
        try:
            self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._update(name, "pw_hash", self._hasher.hash(password))
        return self.get(name)

    # -- bundles published from the console ---------------------------------------------
    def published_version(self, channel: str) -> int:
        """The last version of ``channel`` published from the console (0: none)."""
        with self._lock:
            row = self._db.execute("SELECT version FROM published WHERE channel=?",
                                   (channel,)).fetchone()
        return int(row[0]) if row else 0

    def note_published(self, channel: str, version: int, digest: str) -> None:
        """Remember that ``channel``@``version`` was published."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO published VALUES (?,?,?,?)",
                             (channel, version, digest, time.time()))

    # -- audit ------------------------------------------------------------------------
    def audit(self, user: str, action: str, *, target: str = "", reason: str = "",
              outcome: str = "ok", origin: str = "", at: float | None = None) -> int:
        """Append one audit line (committed before returning); returns its id. ``target``
        must already be masked/hashed: callers never pass raw identifiers."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO audit (at, user, action, target, reason, outcome, origin) "
                "VALUES (?,?,?,?,?,?,?)",
                (time.time() if at is None else at, user, action, target[:200],
                 reason[:500], outcome[:200], origin[:100]))
            return int(cur.lastrowid or 0)

    def set_outcome(self, entry: int, outcome: str) -> None:
        """Record how audit line ``entry`` ended (the action is logged before it runs)."""
        with self._lock:
            self._db.execute("UPDATE audit SET outcome=? WHERE id=?", (outcome[:200], entry))

    def audit_log(self, *, limit: int = 200, user: str | None = None,
                  action: str | None = None) -> list[AuditEntry]:
        """The latest ``limit`` audit lines, newest first, optionally of one user/action."""
        sql, args = "SELECT * FROM audit WHERE 1=1", list[str]()
        if user:
            sql, args = sql + " AND user=?", [*args, user]
        if action:
            sql, args = sql + " AND action=?", [*args, action]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
            return [AuditEntry(*r) for r in rows.fetchall()]

    def lookups_within(self, user: str, action: str, window_s: float,
                       now: float | None = None) -> int:
        """How many ``action`` lines ``user`` has in the last ``window_s`` seconds of wall
        time. Lines stamped after ``now`` (a clock set back) do not count: a clock jump
        never locks a user out for longer than the window."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM audit WHERE user=? AND action=? "
                                   "AND at>? AND at<=?", (user, action, now - window_s, now))
            return int(row.fetchone()[0])


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    if password != password.strip("\r\n"):
        raise AccountError("password: no line breaks")


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    """An audit line as JSON-ready dict (``at`` as RFC 3339 UTC)."""
    from agent.journal import utc_stamp

    return {"id": e.id, "at": utc_stamp(e.at), "user": e.user, "action": e.action,
            "target": e.target, "reason": e.reason, "outcome": e.outcome, "origin": e.origin}
