"""The terminal's side of protocol v2 (``docs/protocol.md`` §10): its signing identity,
signed tx batches, the batches it remembers having sent, and what it ignores.

* :class:`UplinkIdentity` — the terminal's private key (signs each batch's chain head)
  and the hub's ack/status public key, loaded from the ``[identity]`` directory.
* :func:`encode_batch_v2` — a tx batch with its head signature and a fresh batch id.
* :class:`SentBatches` — the last :data:`SENT_MEMORY` batches sent, by batch id, with
  the acked seq at the time each left: an ack counts only if it answers one of them,
  and a lower ack answering a batch sent after the acked point proves the hub lost data.
* :class:`Ignored` — counters of ignored messages by kind, with one WARNING per kind and
  period (``period_s``), never one per message.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.identity import (
    PrivateKey,
    PublicKey,
    TerminalIdentityPaths,
    load_private_key,
    load_public_key,
    sign,
)
from sync.signed import b64, load_json, tx_head_bytes

__all__ = ["fit_batch", "PROTOCOL_V1", "SENT_MEMORY", "Ignored", "SentBatch", "SentBatches",
           "UplinkIdentity", "encode_batch", "encode_batch_v2", "new_batch_id", "parse_ack"]

log = logging.getLogger("sync.uplink")

SENT_MEMORY = 256
"""Batches remembered for matching acks; an ack answering an older one is stale."""


@dataclass(frozen=True, slots=True)
class UplinkIdentity:
    """What a terminal signs with and what it verifies the hub with."""

    key: PrivateKey
    hub_key: PublicKey

    @classmethod
    def load(cls, directory: Path) -> UplinkIdentity:
        """From an identity directory (``terminal.key``, ``hub-signing.pub``). Raises
        :class:`agent.identity.IdentityError` naming the file that is missing or bad."""
        paths = TerminalIdentityPaths(Path(directory))
        return cls(load_private_key(paths.key), load_public_key(paths.hub_key))


def new_batch_id() -> str:
    """A fresh random batch id (16 hex digits), echoed by the hub's ack."""
    return secrets.token_hex(8)


def encode_batch_v2(terminal: str, epoch: str, rows: list[tuple[int, str, str]],
                    key: PrivateKey, batch_id: str,
                    skip: tuple[int, int] | None = None) -> bytes:
    """The v2 tx payload for ``rows`` of ``(seq, canonical body text, hash)`` (consecutive,
    chained), signed over the last record's ``(seq, hash)``. ``skip`` ``(from, to)``:
    records the hub lost and this terminal no longer holds (signed too), so the hub's
    chain can go on past them (``docs/protocol.md`` §10.4)."""
    seq, _, digest = rows[-1]
    sig = b64(sign(key, tx_head_bytes(terminal, epoch, seq, digest, skip)))
    parts = ",".join(f'{{"seq":{s},"body":{body},"hash":"{h}"}}' for s, body, h in rows)
    gap = "" if skip is None else f'"skip":{{"from":{skip[0]},"to":{skip[1]}}},'
    return (f'{{"v":2,"terminal":{json.dumps(terminal)},"epoch":"{epoch}",'
            f'"batch":"{batch_id}",{gap}"records":[{parts}],"sig":"{sig}"}}').encode()


@dataclass(frozen=True, slots=True)
class SentBatch:
    """A batch as sent: its records ``first..last``, the hash of ``last`` and the
    terminal's acked seq when it left."""

    first: int
    last: int
    head_hash: str
    acked_at_send: int


class SentBatches:
    """The last ``size`` batches sent, by batch id (thread-safe enough: single writer,
    the dict operations are atomic under the GIL and every reader tolerates a miss)."""

    def __init__(self, size: int = SENT_MEMORY) -> None:
        self._size = size
        self._by_id: OrderedDict[str, SentBatch] = OrderedDict()

    def add(self, batch_id: str, batch: SentBatch) -> None:
        self._by_id[batch_id] = batch
        while len(self._by_id) > self._size:
            self._by_id.popitem(last=False)

    def get(self, batch_id: str) -> SentBatch | None:
        return self._by_id.get(batch_id)

    def clear(self) -> None:
        """Forget every batch: acks answering them are stale from now on (after a
        resync, so an ack of the hub's previous life can never move the terminal)."""
        self._by_id.clear()


class Ignored:
    """Counts ignored messages into ``stats[kind]`` and logs one WARNING per kind per
    ``period_s`` (with how many were ignored since the last one)."""

    def __init__(self, stats: dict[str, int], period_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.period_s = period_s
        self._clock = clock
        self._logged: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def __call__(self, kind: str, detail: str) -> None:
        self.stats[kind] = self.stats.get(kind, 0) + 1
        self._since[kind] = self._since.get(kind, 0) + 1
        now = self._clock()
        last = self._logged.get(kind)
        if last is None or now - last >= self.period_s:
            self._logged[kind] = now
            log.warning("ignored %d message(s) counted as %s (%d in all); latest: %s",
                        self._since.pop(kind), kind, self.stats[kind], detail[:200])


PROTOCOL_V1 = 1
"""The legacy, unsigned protocol (``docs/protocol.md`` §4, §5)."""


def encode_batch(terminal: str, rows: list[tuple[int, str, str]]) -> bytes:
    """The tx payload for ``rows`` of ``(seq, canonical body text, hash)``.

    The canonical body text is embedded verbatim (it is JSON), so nothing is re-encoded.
    """
    parts = ",".join(f'{{"seq":{seq},"body":{body},"hash":"{digest}"}}'
                     for seq, body, digest in rows)
    return (f'{{"v":{PROTOCOL_V1},"terminal":{json.dumps(terminal)},'
            f'"records":[{parts}]}}').encode()


def parse_ack(payload: bytes) -> int:
    """The ``seq`` of an ack payload ``{"v":1,"seq":N}``. Raises ``ValueError`` if malformed."""
    msg = load_json(payload, 4096)
    if not isinstance(msg, dict):
        raise ValueError("ack is not a JSON object")
    if msg.get("v") != PROTOCOL_V1:
        raise ValueError(f"ack has unsupported version {msg.get('v')!r}")
    seq = msg.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("ack seq is not a non-negative integer")
    return seq


Rows = list[tuple[int, str, str]]


def fit_batch(rows: Rows, encode: Callable[[Rows], bytes], limit: int | None
              ) -> tuple[Rows, bytes]:
    """The longest prefix of ``rows`` whose encoded payload fits ``limit`` bytes (the
    broker's Maximum Packet Size on the tx topic; None: no limit), and that payload. A
    batch that does not fit is halved until it does, so an oversize batch is never sent
    (Mosquitto would disconnect the sender, and the resend after reconnecting would loop).
    Raises ``ValueError`` when not even one record fits."""
    while True:
        payload = encode(rows)
        if limit is None or len(payload) <= limit:
            return rows, payload
        if len(rows) == 1:
            raise ValueError(f"record {rows[0][0]} alone ({len(payload)} bytes) exceeds the "
                             f"broker's limit of {limit} bytes")
        rows = rows[:len(rows) // 2]
