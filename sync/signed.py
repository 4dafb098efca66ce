"""Protocol v2's signed messages: a tx batch's chain head, the hub's ack, the hub's status.

Every signature is over the canonical encoding (``docs/protocol.md`` §1.1) of a small
object whose ``kind`` names what is signed, so a signature of one kind can never pass for
another:

* tx head, signed by the terminal (``terminals/{terminal}.crt`` at the hub):
  ``{"epoch","hash","kind":"ykt-tx-head","seq","terminal","v":2}`` — the last record of
  the batch; because records are hash-chained, the head authenticates every record
  before it;
* ack, signed by the hub (``hub-signing.key``): the ack payload without ``sig``
  (``kind`` ``ykt-ack``);
* hub status, signed by the hub: the status payload without ``sig``
  (``kind`` ``ykt-hub-status``).

Signatures travel as unpadded base64url text. The parsers here take outside input: they
never raise anything but ``ValueError`` (deep nesting, huge numbers, lone surrogates and
oversize payloads included) and do bounded work.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from agent.errors import YktError
from agent.identity import PrivateKey, PublicKey, sign, verify
from agent.journal import canonical

__all__ = ["ACK_KIND", "HUB_STATUS_KIND", "MAX_CONTROL_BYTES", "MAX_SEQ", "TX_HEAD_KIND",
           "SignedAck", "b64", "check_epoch", "check_seq", "encode_ack",
           "encode_hub_status", "load_json", "parse_ack_v2", "parse_hub_status",
           "tx_head_bytes", "unb64"]

PROTOCOL_V2 = 2
TX_HEAD_KIND = "ykt-tx-head"
ACK_KIND = "ykt-ack"
HUB_STATUS_KIND = "ykt-hub-status"

MAX_SEQ = 2**63 - 1
"""Largest seq anyone stores (a signed 64-bit integer in both hub databases)."""

MAX_CONTROL_BYTES = 4096
"""An ack or hub status larger than this is refused before it is parsed."""

_EPOCH_RE = re.compile(r"^[0-9a-f]{0,32}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{1,32}$")


def load_json(payload: bytes, max_bytes: int | None = None) -> Any:
    """``payload`` parsed as JSON; ``ValueError`` for anything else, including a payload
    over ``max_bytes``, invalid UTF-8, lone surrogates and nesting too deep to parse."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise ValueError(f"{len(payload)} bytes, more than {max_bytes}")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"not JSON: {type(err).__name__}") from None
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None


def check_seq(value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` if it is an int in ``[minimum, MAX_SEQ]``, else ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or not (
            minimum <= value <= MAX_SEQ):
        raise ValueError(f"{what} is not an integer in {minimum}..2^63-1")
    return value


def check_epoch(value: Any) -> str:
    """A terminal incarnation id: up to 32 lowercase hex digits (``""`` = legacy)."""
    if not isinstance(value, str) or not _EPOCH_RE.match(value):
        raise ValueError("epoch is not up to 32 lowercase hex digits")
    return value


def _check_hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HASH_RE.match(value):
        raise ValueError(f"{what} is not 64 lowercase hex digits")
    return value


def b64(sig: bytes) -> str:
    """Unpadded base64url text of a signature."""
    return base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def unb64(text: Any) -> bytes:
    """The bytes of an unpadded base64url signature; ``ValueError`` if it is not one."""
    if not isinstance(text, str) or not 0 < len(text) <= 200:
        raise ValueError("sig is not a base64url string of at most 200 characters")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("sig is not base64url") from None


def tx_head_bytes(terminal: str, epoch: str, seq: int, digest: str,
                  skip: tuple[int, int] | None = None) -> bytes:
    """What a terminal signs for a batch whose last record is ``(seq, digest)``; with
    ``skip`` ``(from, to)``, also its statement that it no longer holds those records."""
    signed: dict[str, Any] = {"kind": TX_HEAD_KIND, "v": PROTOCOL_V2, "terminal": terminal,
                              "epoch": epoch, "seq": seq, "hash": digest}
    if skip is not None:
        signed["skip"] = {"from": skip[0], "to": skip[1]}
    return canonical(signed)


@dataclass(frozen=True, slots=True)
class SignedAck:
    """A verified v2 ack: the hub holds every record ``1..seq`` of ``(terminal, epoch)``,
    record ``seq`` hashing to ``hash``, in store ``hub_store``; it answers the batch whose
    head was ``(answers_seq, answers_hash)`` and whose id was ``answers_batch``."""

    terminal: str
    epoch: str
    seq: int
    hash: str
    hub_store: str
    answers_seq: int
    answers_hash: str
    answers_batch: str


def encode_ack(key: PrivateKey, ack: SignedAck) -> bytes:
    """The signed ack payload for ``ack``."""
    body: dict[str, Any] = {
        "v": PROTOCOL_V2, "terminal": ack.terminal, "epoch": ack.epoch, "seq": ack.seq,
        "hash": ack.hash, "hub_store": ack.hub_store,
        "answers": {"seq": ack.answers_seq, "hash": ack.answers_hash,
                    "batch": ack.answers_batch}}
    sig = sign(key, canonical({"kind": ACK_KIND, **body}))
    return canonical({**body, "sig": b64(sig)})


class BadSignature(YktError, ValueError):
    """The message is well formed but its signature does not verify."""


def parse_ack_v2(payload: bytes, hub_key: PublicKey) -> SignedAck:
    """The ack in ``payload`` once its signature verifies with ``hub_key``.

    Raises :class:`BadSignature` for a forged or altered ack, ``ValueError`` for a
    malformed one. Never anything else."""
    msg = load_json(payload, MAX_CONTROL_BYTES)
    if not isinstance(msg, dict):
        raise ValueError("ack is not a JSON object")
    if msg.get("v") != PROTOCOL_V2:
        raise ValueError(f"ack version is not {PROTOCOL_V2}")
    keys = {"v", "terminal", "epoch", "seq", "hash", "hub_store", "answers", "sig"}
    if set(msg) != keys:
        raise ValueError("ack fields are not exactly " + ",".join(sorted(keys)))
    answers = msg["answers"]
    if not isinstance(answers, dict) or set(answers) != {"seq", "hash", "batch"}:
        raise ValueError("ack answers is not {seq, hash, batch}")
    if not isinstance(msg["terminal"], str) or not isinstance(msg["hub_store"], str) or \
            not _NONCE_RE.match(msg["hub_store"]):
        raise ValueError("ack terminal or hub_store is malformed")
    if not isinstance(answers["batch"], str) or not _NONCE_RE.match(answers["batch"]):
        raise ValueError("ack answers.batch is malformed")
    ack = SignedAck(msg["terminal"][:100], check_epoch(msg["epoch"]),
                    check_seq(msg["seq"], "ack seq"), _check_hash(msg["hash"], "ack hash"),
                    msg["hub_store"], check_seq(answers["seq"], "answers.seq", minimum=1),
                    _check_hash(answers["hash"], "answers.hash"), answers["batch"])
    sig = unb64(msg.pop("sig"))
    try:
        signed = canonical({"kind": ACK_KIND, **msg})
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError("ack has no canonical form") from None
    if not verify(hub_key, sig, signed):
        raise BadSignature("ack signature does not verify with hub-signing.pub")
    return ack


def encode_hub_status(key: PrivateKey | None, instance: str, state: str,
                      since_ms: int) -> bytes:
    """A hub status payload; signed (v2) with ``key``, or the v1 payload without one."""
    if key is None:
        return json.dumps({"v": 1, "state": state, "instance": instance,
                           "since": round(since_ms / 1000, 3)}).encode()
    body = {"v": PROTOCOL_V2, "state": state, "instance": instance, "since_ms": since_ms}
    sig = sign(key, canonical({"kind": HUB_STATUS_KIND, **body}))
    return canonical({**body, "sig": b64(sig)})


def parse_hub_status(payload: bytes, hub_key: PublicKey | None) -> str:
    """The ``state`` of a hub status. With ``hub_key`` only a v2 status whose signature
    verifies counts (:class:`BadSignature` otherwise); without, the v1 form. ``ValueError``
    when malformed, never anything else."""
    msg = load_json(payload, MAX_CONTROL_BYTES)
    if not isinstance(msg, dict):
        raise ValueError("hub status is not a JSON object")
    state = msg.get("state")
    if not isinstance(state, str):
        raise ValueError("hub status has no state")
    if hub_key is None or state != "online":
        return state  # only "online" makes a terminal act, so only it must be signed
    if msg.get("v") != PROTOCOL_V2 or "sig" not in msg:
        raise BadSignature("hub status is not signed")
    sig = unb64(msg.pop("sig"))
    try:
        signed = canonical({"kind": HUB_STATUS_KIND, **msg})
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        raise ValueError("hub status has no canonical form") from None
    if not verify(hub_key, sig, signed):
        raise BadSignature("hub status signature does not verify with hub-signing.pub")
    return state
