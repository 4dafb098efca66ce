"""Operations commands from the hub (``docs/protocol.md`` §12): the messages, and the
terminal's side that checks and answers them.

The hub publishes a command on ``ykt/v1/t/{terminal}/cmd``; the terminal answers on
``…/cmd/result``. Every command carries the hub instance's epoch (``hub``, 32 random hex
digits made when that hub process starts), a counter ``n`` that only grows within that
epoch and a random ``id`` the result echoes. With the hub's public key (protocol v2) the
terminal believes only a command whose signature (kind ``ykt-cmd``) verifies with
``hub-signing.pub``; without one (legacy v1, development) it accepts unsigned only the
operations in :data:`UNSIGNED_OPS`, none of which changes a decision. A command is refused as a replay unless its ``n`` is above the
highest accepted so far for its epoch; that memory (:class:`ReplayMemory`) is kept in
the journal's meta table, so a replay captured before a restart stays refused. No
check here looks at the wall clock.

Operations:

* ``ping`` / ``time``: answer with the terminal's clock readings — ``time_us`` (the
  decision time records are stamped with), ``wall_us`` (the system clock), ``clock``
  (its quality) — and the outbox (``last_seq``, ``acked_seq``, ``outbox``,
  ``oldest_unsynced``). The hub computes the offset from the round trip.
* ``clock``: the hub tells the terminal what it measured (``offset_us``, ``error_us``,
  ``measured_ms``); the terminal keeps it for ``ykt diag`` (:meth:`CommandResponder.clock`).

This module holds no MQTT: :mod:`sync.commands` subscribes and publishes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import YktError
from agent.identity import PrivateKey, PublicKey, sign, verify
from agent.journal import canonical

__all__ = ["CMD_KIND", "MAX_CMD_BYTES", "OPS", "READ_ONLY_OPS", "RESULT_KIND", "UNSIGNED_OPS", "Command",
           "CommandRefused", "CommandResponder", "MetaStore", "ReplayMemory", "encode_command",
           "encode_result", "parse_command", "parse_result"]

log = logging.getLogger(__name__)

CMD_KIND = "ykt-cmd"
RESULT_KIND = "ykt-cmd-result"
MAX_CMD_BYTES = 4096
"""A command or result larger than this is refused before it is parsed."""
OPS = ("ping", "time", "clock")
READ_ONLY_OPS = ("ping", "time")
"""The operations answered with readings."""
UNSIGNED_OPS = ("ping", "time", "clock")
"""What a terminal without the hub's key (legacy v1, development) accepts unsigned: none
changes a decision (as unsigned v1 acks, it trusts the broker). An operation that would
must be left out of this list: it then needs protocol v2."""
MAX_N = 2**63 - 1
_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
_ARG_KEYS = {"clock": {"offset_us", "error_us", "measured_ms"}}


class CommandRefused(YktError, ValueError):
    """Why a command (or, at the hub, a result) was not taken; ``kind`` counts it
    (``forged_cmd``…)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Command:
    """A command as sent: ``hub`` epoch, counter ``n``, nonce ``id``, ``op`` and its
    integer ``args`` (``clock`` only)."""

    terminal: str
    hub: str
    n: int
    id: str
    op: str
    args: dict[str, int] | None = None

    def body(self, version: int) -> dict[str, Any]:
        out: dict[str, Any] = {"v": version, "terminal": self.terminal, "hub": self.hub,
                               "n": self.n, "id": self.id, "op": self.op}
        if self.args:
            out["args"] = dict(self.args)
        return out


def _b64(sig: bytes) -> str:
    return base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str) or not 0 < len(text) <= 200:
        raise CommandRefused("malformed_cmd", "sig is not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CommandRefused("malformed_cmd", "sig is not base64url") from None


def _load(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_CMD_BYTES:
        raise CommandRefused(f"malformed_{what}", f"{len(payload)} bytes, more than "
                             f"{MAX_CMD_BYTES}")
    try:
        msg = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise CommandRefused(f"malformed_{what}", "not JSON") from None
    if not isinstance(msg, dict):
        raise CommandRefused(f"malformed_{what}", "not a JSON object")
    return msg


def _int(value: Any, what: str, lo: int = -MAX_N, hi: int = MAX_N) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise CommandRefused("malformed_cmd", f"{what} is not an integer in range")
    return value


def encode_command(key: PrivateKey | None, cmd: Command) -> bytes:
    """The payload of ``cmd``: signed v2 with the hub's ``key``, the unsigned v1 without."""
    if key is None:
        return canonical(cmd.body(1))
    body = cmd.body(2)
    return canonical({**body, "sig": _b64(sign(key, canonical({"kind": CMD_KIND, **body})))})


def parse_command(payload: bytes, hub_key: PublicKey | None, terminal: str) -> Command:
    """The command in ``payload`` for ``terminal``. With ``hub_key`` only a v2 command
    whose signature verifies counts. Raises :class:`CommandRefused` (``malformed_cmd``,
    ``unsigned_cmd``, ``forged_cmd``, ``misaddressed_cmd``, ``unknown_op``), nothing else."""
    msg = _load(payload, "cmd")
    version = msg.get("v")
    keys = {"v", "terminal", "hub", "n", "id", "op"} | ({"args"} if "args" in msg else set())
    if version == 2:
        keys.add("sig")
    if version not in (1, 2) or isinstance(version, bool) or set(msg) != keys:
        raise CommandRefused("malformed_cmd", "fields are not v, terminal, hub, n, id, op "
                             "[, args] [, sig]")
    if msg["terminal"] != terminal:
        raise CommandRefused("misaddressed_cmd", "command for another terminal")
    for k in ("hub", "id"):
        if not isinstance(msg[k], str) or not _HEX_RE.match(msg[k]):
            raise CommandRefused("malformed_cmd", f"{k} is not 32 lowercase hex digits")
    n = _int(msg["n"], "n", 1)
    op = msg["op"]
    if not isinstance(op, str) or op not in OPS:
        raise CommandRefused("unknown_op", f"unknown op {str(op)[:20]!r}")
    args: dict[str, int] | None = None
    if "args" in msg:
        raw = msg["args"]
        if not isinstance(raw, dict) or set(raw) != _ARG_KEYS.get(op, set()):
            raise CommandRefused("malformed_cmd", f"args of {op} are not "
                                 f"{sorted(_ARG_KEYS.get(op, set()))}")
        args = {k: _int(v, f"args.{k}") for k, v in raw.items()}
    elif op in _ARG_KEYS:
        raise CommandRefused("malformed_cmd", f"{op} needs args")
    if hub_key is not None:
        if version != 2:
            raise CommandRefused("unsigned_cmd", "an unsigned (v1) command; this terminal "
                                 "has the hub's key and requires v2")
        sig = _unb64(msg.pop("sig"))
        if not verify(hub_key, sig, canonical({"kind": CMD_KIND, **msg})):
            raise CommandRefused("forged_cmd", "signature does not verify with "
                                 "hub-signing.pub")
    elif version == 2:
        raise CommandRefused("unverifiable_cmd", "a signed command, but this terminal has "
                             "no hub key ([identity] dir)")
    elif op not in UNSIGNED_OPS:
        raise CommandRefused("unsigned_cmd", f"{op} needs a signed command (protocol v2)")
    return Command(terminal, msg["hub"], n, msg["id"], op, args)


def encode_result(key: PrivateKey | None, cmd: Command, fields: dict[str, Any]) -> bytes:
    """The result of ``cmd``: ``fields`` with ``id``, ``hub``, ``n``, ``op``,
    ``terminal``; signed by the terminal's ``key`` (kind ``ykt-cmd-result``) if given."""
    body = {**fields, "v": 1 if key is None else 2, "terminal": cmd.terminal,
            "hub": cmd.hub, "n": cmd.n, "id": cmd.id, "op": cmd.op}
    if key is None:
        return canonical(body)
    return canonical({**body, "sig": _b64(sign(key, canonical({"kind": RESULT_KIND,
                                                                 **body})))})


def parse_result(payload: bytes, terminal_key: PublicKey | None) -> dict[str, Any]:
    """A result's fields. With ``terminal_key`` (the hub runs v2) only a signed result
    that verifies counts. Raises :class:`CommandRefused` (``malformed_result``,
    ``forged_result``), nothing else."""
    msg = _load(payload, "result")
    if not isinstance(msg.get("id"), str) or not _HEX_RE.match(msg["id"]):
        raise CommandRefused("malformed_result", "id is not 32 lowercase hex digits")
    if terminal_key is not None:
        if msg.get("v") != 2 or "sig" not in msg:
            raise CommandRefused("forged_result", "result is not signed")
        try:
            sig = _unb64(msg.pop("sig"))
            signed = canonical({"kind": RESULT_KIND, **msg})
        except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
            raise CommandRefused("malformed_result", "result has no canonical form") from None
        if not verify(terminal_key, sig, signed):
            raise CommandRefused("forged_result", "signature does not verify with the "
                                 "terminal's enrolled certificate")
    return msg


class MetaStore(Protocol):
    """Where :class:`ReplayMemory` keeps its state: the journal's meta table."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


class ReplayMemory:
    """The highest accepted ``n`` per hub epoch for the :data:`EPOCHS` most recently used
    epochs, kept durably under :data:`META_KEY` in ``meta`` (the journal: it survives a
    restart with the records, and a new data directory is a new terminal incarnation
    anyway). ``meta`` None keeps it in memory only (tests)."""

    EPOCHS = 64
    META_KEY = "hub_commands"

    def __init__(self, meta: MetaStore | None) -> None:
        self.meta = meta
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        raw = meta.get_meta(self.META_KEY) if meta is not None else None
        if raw:
            try:
                self._seen = {k: int(v) for k, v in json.loads(raw).items()
                              if isinstance(k, str) and _HEX_RE.match(k)}
            except (ValueError, AttributeError, TypeError):
                log.warning("journal meta %s unreadable: starting an empty command memory",
                            self.META_KEY)

    def accept(self, hub: str, n: int) -> bool:
        """True (and remembered) if ``n`` is above every ``n`` accepted for ``hub``."""
        with self._lock:
            if n <= self._seen.get(hub, 0):
                return False
            self._seen.pop(hub, None)
            self._seen[hub] = n                    # most recently used last
            while len(self._seen) > self.EPOCHS:
                self._seen.pop(next(iter(self._seen)))
            if self.meta is not None:
                self.meta.set_meta(self.META_KEY, json.dumps(self._seen))
        return True


class CommandResponder:
    """The terminal's side: :meth:`handle` takes a ``cmd`` payload and returns the result
    payload to publish, or None when the command is refused (counted in :attr:`stats`,
    one WARNING per kind and minute). ``readings()`` gives the clock and outbox fields;
    ``mono`` is the terminal's monotonic clock (s) for the age of the hub's measurement."""

    def __init__(self, terminal: str, readings: Callable[[], dict[str, Any]], *,
                 hub_key: PublicKey | None = None, key: PrivateKey | None = None,
                 memory: ReplayMemory | None = None,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.terminal = terminal
        self.readings = readings
        self.hub_key = hub_key
        self.key = key
        self.memory = memory or ReplayMemory(None)
        self.mono = mono
        self.stats: dict[str, int] = {"answered": 0}
        self._warned: dict[str, float] = {}
        self._clock: dict[str, Any] | None = None

    def handle(self, payload: bytes) -> bytes | None:
        """The result payload for the ``cmd`` ``payload`` (to publish on ``cmd/result``),
        or None when it is refused. Never raises for anything in ``payload``."""
        try:
            cmd = parse_command(payload, self.hub_key, self.terminal)
            if not self.memory.accept(cmd.hub, cmd.n):
                raise CommandRefused("replayed_cmd", f"n {cmd.n} of hub epoch {cmd.hub} "
                                     "is not above the last accepted")
        except CommandRefused as err:
            self._refused(err)
            return None
        fields: dict[str, Any] = {"ok": True}
        if cmd.op in READ_ONLY_OPS:
            fields.update(self.readings())
        else:       # "clock": what the hub measured, kept for `ykt diag`
            assert cmd.args is not None
            self._clock = {**cmd.args, "received_mono": self.mono(), "hub": cmd.hub}
        self.stats["answered"] += 1
        return encode_result(self.key, cmd, fields)

    def clock(self) -> dict[str, Any]:
        """The hub's last round-trip measurement of this terminal: ``offset_s``,
        ``error_s`` (seconds, offset = terminal decision time − hub time), ``age_s``
        (since it arrived, by the monotonic clock); all None before the first."""
        c = self._clock
        if c is None:
            return {"offset_s": None, "error_s": None, "age_s": None}
        return {"offset_s": c["offset_us"] / 1e6, "error_s": c["error_us"] / 1e6,
                "age_s": round(self.mono() - c["received_mono"], 1),
                "measured_ms": c["measured_ms"]}

    def _refused(self, err: CommandRefused) -> None:
        self.stats[err.kind] = self.stats.get(err.kind, 0) + 1
        now = self.mono()
        if now - self._warned.get(err.kind, -1e18) >= 60.0:
            self._warned[err.kind] = now
            log.warning("refused a hub command (%s): %s", err.kind, err)
