"""The hub service: receive tx batches, validate, commit, then acknowledge.

:class:`Hub` subscribes to ``$share/{group}/ykt/v1/t/+/tx`` (an MQTT 5 shared subscription,
so several hub instances can split the load) and ``ykt/v1/t/+/status``. For each tx
message it:

1. validates the payload (:func:`parse_batch`): JSON, version, the payload's terminal
   equals the topic's, the terminal is known (when a list is configured), each record
   well formed; anything wrong is logged and counted in the store (``hub report``);
2. stores the valid records in one transaction (:meth:`HubStore.ingest`), which verifies
   the hash chain and flags breaks;
3. only after the commit, publishes ``{"v":1,"seq":N}`` on ``t/{terminal}/ack`` (QoS 1),
   N being the highest contiguous seq stored.

With an identity (``--identity``, :class:`~sync.hub.trust.HubTrust`) it speaks protocol v2
(``docs/protocol.md`` §10): a batch counts only if its terminal is enrolled and not
revoked, its records form one chain and the chain head's signature verifies — checked
before anything is stored; acks and the hub's status are signed. Without one it takes
only the legacy unsigned v1 (development).

Fault injection: with ``YKT_HUB_CRASH_AFTER_COMMIT=N`` in the environment the process
exits with ``os._exit(9)`` right after its Nth commit, before acknowledging.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sync.hub.chain import IncomingRecord
from sync.hub.cmd import attach_probe
from sync.hub.fleetstore import FleetStore
from sync.hub.store import HubStore, IngestResult
from sync.hub.trust import HubTrust, UntrustedTerminal, check_batch_chain
from sync.link import Link, MqttSettings, NotConnected
from sync.signed import (
    MAX_SEQ,
    SignedAck,
    b64,
    check_epoch,
    check_seq,
    encode_ack,
    encode_hub_status,
    load_json,
    unb64,
)
from sync.topics import TerminalTopics, hub_status, parse_terminal_topic

__all__ = ["CRASH_ENV", "MAX_BATCH_RECORDS", "Hub", "ParsedBatch", "default_instance",
           "parse_batch"]

log = logging.getLogger(__name__)

CRASH_ENV = "YKT_HUB_CRASH_AFTER_COMMIT"
MAX_BATCH_RECORDS = 10_000
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_BATCH_ID_RE = re.compile(r"^[0-9a-f]{1,32}$")


@dataclass(slots=True)
class ParsedBatch:
    """A tx payload after validation: the good records and why the others were dropped."""

    terminal: str
    records: list[IncomingRecord] = field(default_factory=list)
    bad_records: list[str] = field(default_factory=list)
    version: int = 1
    epoch: str = ""
    batch_id: str = ""
    sig: bytes = b""
    skip: tuple[int, int] | None = None


def _record(terminal: str, i: int, raw: Any) -> IncomingRecord:
    if not isinstance(raw, dict):
        raise ValueError(f"record #{i} is not an object")
    seq, body, digest = raw.get("seq"), raw.get("body"), raw.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"record #{i}: seq is not an integer in 1..2^63-1")
    if not isinstance(body, dict):
        raise ValueError(f"record seq {seq}: body is not an object")
    if not isinstance(digest, str) or not _HASH_RE.match(digest):
        raise ValueError(f"record seq {seq}: hash is not 64 lowercase hex digits")
    if body.get("terminal") != terminal:
        raise ValueError(f"record seq {seq}: body terminal differs from the sender")
    try:
        text = _canonical_text(body)
        raw_text = text.encode()
    except (ValueError, TypeError, RecursionError) as err:
        raise ValueError(f"record seq {seq}: body has no canonical form (floats are not "
                         "allowed in journal records)") from err
    return IncomingRecord(seq, digest, body, text, hashlib.sha256(raw_text).hexdigest())


class _NotCanonical:
    """Stands in for a float / NaN / Infinity parsed from a payload; it cannot be encoded,
    so :func:`_canonical_text` refuses the record holding it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<float>"


def _not_canonical(_text: str) -> _NotCanonical:
    return _NotCanonical()


_decode = json.JSONDecoder(parse_float=_not_canonical, parse_constant=_not_canonical).decode
_canonical_text = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                   allow_nan=False).encode
"""Same text as :func:`agent.journal.canonical` for bodies parsed by :data:`_decode` (which
turns floats into :class:`_NotCanonical` so encoding fails instead of scanning for floats);
``tests/test_hub.py`` checks the two agree."""


def parse_batch(topic_terminal: str, payload: bytes) -> ParsedBatch:
    """Validate a tx payload sent on ``t/{topic_terminal}/tx``.

    Raises ``ValueError`` (with a message naming what is wrong, without record contents)
    when the whole message must be rejected; single bad records are listed in
    :attr:`ParsedBatch.bad_records` and the rest are kept.
    """
    try:
        msg = _decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"payload is not JSON: {type(err).__name__}") from None
    if not isinstance(msg, dict):
        raise ValueError("payload is not a JSON object")
    version = msg.get("v")
    if version not in (1, 2) or isinstance(version, bool):
        raise ValueError(f"unsupported payload version {str(version)[:20]!r}")
    if msg.get("terminal") != topic_terminal:
        raise ValueError("payload terminal differs from the topic's terminal")
    records = msg.get("records")
    if not isinstance(records, list) or not records:
        raise ValueError("records is not a non-empty list")
    if len(records) > MAX_BATCH_RECORDS:
        raise ValueError(f"more than {MAX_BATCH_RECORDS} records in one batch")
    batch = ParsedBatch(topic_terminal, version=int(version))
    if version == 2:
        batch.epoch = check_epoch(msg.get("epoch"))
        batch.sig = unb64(msg.get("sig"))
        batch_id = msg.get("batch")
        if not isinstance(batch_id, str) or not _BATCH_ID_RE.match(batch_id):
            raise ValueError("batch id is not 1 to 32 lowercase hex digits")
        batch.batch_id = batch_id
        skip = msg.get("skip")
        if skip is not None:
            if not isinstance(skip, dict) or set(skip) != {"from", "to"}:
                raise ValueError("skip is not {from, to}")
            lo, hi = check_seq(skip["from"], "skip.from", minimum=1), check_seq(
                skip["to"], "skip.to", minimum=1)
            if lo > hi:
                raise ValueError("skip.from is beyond skip.to")
            batch.skip = (lo, hi)
    for i, raw in enumerate(records):
        try:
            batch.records.append(_record(topic_terminal, i, raw))
        except ValueError as err:
            batch.bad_records.append(str(err))
    return batch


def default_instance() -> str:
    """``ykt-hub-{host}-{pid}``: the MQTT client id and status-topic name of a hub.

    The host name keeps hubs on different machines or containers (where every hub may be
    pid 1) from sharing a client id, which would make the broker drop one of them."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40].strip("-.") or "host"
    return f"ykt-hub-{host}-{os.getpid()}"


class Hub:
    """Ingest service: ``store`` is where batches go; ``known_terminals`` (if given) is the
    list of terminals allowed to send; others are rejected and reported.

    ``crash_after_commit`` defaults to ``$YKT_HUB_CRASH_AFTER_COMMIT`` (tests only).
    ``trust`` (the hub identity) switches to protocol v2: only enrolled terminals' signed
    batches are stored, acks and the hub status are signed. With ``fleet`` the hub keeps
    each terminal's last known state and measures its clock by a round trip every
    ``clock_probe_s`` s (:mod:`sync.hub.cmd`; commands signed under ``trust``).
    """

    def __init__(self, store: HubStore, settings: MqttSettings,
                 known_terminals: set[str] | None = None, *, share_group: str = "ykt-hub",
                 client_id: str | None = None, crash_after_commit: int | None = None,
                 trust: HubTrust | None = None, fleet: FleetStore | None = None,
                 clock_probe_s: float = 60.0) -> None:
        self.store = store
        self.trust = trust
        self.known_terminals = None if known_terminals is None else set(known_terminals)
        env = os.environ.get(CRASH_ENV)
        self.crash_after_commit = crash_after_commit if crash_after_commit is not None else (
            int(env) if env else None)
        self.commits = 0
        self.stats: dict[str, int] = {"batches": 0, "records": 0, "acks": 0, "rejected": 0,
                                      "ack_failures": 0, "bad_signatures": 0}
        self._lock = threading.Lock()
        self.instance = client_id or default_instance()
        self.status_topic = hub_status(self.instance)
        self.link = Link(settings, self.instance, status_topic=self.status_topic)
        self.link.on_subscribed = self._announce
        self.link.subscribe(TerminalTopics.all_of("tx"), self._on_tx, qos=1,
                            share_group=share_group)
        # Not shared: a hub wants every retained status on start (they are small).
        self.link.subscribe(TerminalTopics.all_of("status"), self._on_status, qos=1)
        self.probe = None if fleet is None else attach_probe(   # `ykt hub fleet` (cmd.py)
            self.link, fleet, key=trust.signing_key if trust else None, period_s=clock_probe_s,
            terminal_key=lambda t: trust.terminal_key(t) if trust else None)

    def start(self) -> None:
        """Connect in the background and start ingesting. Safe to call twice."""
        self.link.start()
        if self.probe is not None:
            self.probe.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until connected and subscribed."""
        return self.link.wait_connected(timeout)

    def stop(self) -> None:
        """Disconnect. Safe to call twice. The stores stay open (the caller owns them)."""
        if self.probe is not None:
            self.probe.stop()
        self.link.stop()

    def _announce(self) -> None:
        """Tell terminals this hub is (back) online and subscribed: they resend at once."""
        payload = encode_hub_status(None if self.trust is None else self.trust.signing_key,
                                    self.instance, "online", int(time.time() * 1000))
        try:
            self.link.publish(self.status_topic, payload, qos=1, retain=True)
        except NotConnected:
            log.debug("could not announce hub status: disconnected again")

    # -- message handlers (link thread) --------------------------------------------------
    def _reject(self, terminal: str, kind: str, detail: str) -> None:
        self.stats["rejected"] += 1
        self.stats[kind] = self.stats.get(kind, 0) + 1
        log.warning("rejected %s from terminal %s: %s", kind, terminal or "?", detail)
        self.store.record_reject(terminal, kind, detail)

    def _known(self, terminal: str) -> bool:
        return self.known_terminals is None or terminal in self.known_terminals

    def _sender(self, topic: str, what: str) -> str | None:
        """The terminal a message on ``topic`` comes from, or None (rejected and recorded)
        for a malformed topic or a terminal not in the configured list."""
        parsed = parse_terminal_topic(topic)
        if parsed is None:
            self._reject("", "bad_topic", f"not a valid terminal topic: {topic[:100]!r}")
            return None
        if not self._known(parsed[0]):
            self._reject(parsed[0], "unknown_terminal", f"{what} from a terminal not in the list")
            return None
        if self.trust is not None:
            try:
                self.trust.terminal_key(parsed[0])
            except UntrustedTerminal as err:
                # never a row per unauthenticated id: counted under the empty terminal
                self._reject("", err.kind, f"{what}: {err}"[:300])
                return None
        return parsed[0]

    def _on_tx(self, topic: str, payload: bytes) -> None:
        terminal = self._sender(topic, "batch")
        if terminal is None:
            return
        done = self.ingest_payload(terminal, payload)
        if done is None:
            return
        batch, result = done
        ack = self._ack(batch, result)
        try:
            self.link.publish(TerminalTopics(terminal).ack, ack, qos=1)
            self.stats["acks"] += 1
        except NotConnected:
            # the terminal resends after its ack timeout; the store already has the batch
            self.stats["ack_failures"] += 1
            log.warning("could not ack terminal %s (seq %d): not connected", terminal,
                        result.contiguous_seq)

    def ingest_payload(self, terminal: str, payload: bytes
                       ) -> tuple[ParsedBatch, IngestResult] | None:
        """Check and store one tx payload of ``terminal`` — from MQTT or from an exported
        archive (``ykt hub import``), with the same checks and the same exactly-once
        store. Returns the batch and what was stored, or None when it was rejected
        (recorded)."""
        try:
            batch = parse_batch(terminal, payload)
        except ValueError as err:
            self._reject(terminal, "malformed_payload", str(err))
            return None
        if self.trust is not None and not self._authentic(batch):
            return None
        if self.trust is None and batch.version != 1:
            self._reject(terminal, "unverifiable_batch", "a signed (v2) batch, but this hub "
                         "runs without --identity")
            return None
        for problem in batch.bad_records:
            self._reject(terminal, "malformed_record", problem)
        head_sig = b64(batch.sig) if batch.version == 2 else None
        with self._lock:
            result = self.store.ingest(terminal, batch.records, batch.epoch, head_sig,
                                       batch.skip)
            self.commits += 1
            if self.crash_after_commit is not None and self.commits >= self.crash_after_commit:
                log.critical("fault injection: exiting after commit %d, before the ack",
                             self.commits)
                os._exit(9)
        log.debug("terminal %s: stored %d, duplicates %d, acking %d", terminal,
                  result.stored, result.duplicates, result.contiguous_seq)
        self.stats["batches"] += 1
        self.stats["records"] += result.stored
        return batch, result

    def _authentic(self, batch: ParsedBatch) -> bool:
        """Is ``batch`` a signed batch of its (enrolled) terminal whose records all chain
        to the signed head? Rejected (recorded) if not: nothing of it is stored."""
        assert self.trust is not None
        t = batch.terminal
        if batch.version != 2:
            self._reject(t, "unsigned_batch", "a v1 (unsigned) batch; this hub requires v2")
            return False
        if batch.bad_records:
            self._reject(t, "malformed_payload", "signed batch with malformed records: "
                         + batch.bad_records[0])
            return False
        problem = check_batch_chain(batch.records)
        if problem is None and batch.skip is not None and \
                batch.records[0].seq != batch.skip[1] + 1:
            problem = "skip does not end right before the batch's first record"
        if problem is not None:
            self._reject(t, "unchained_batch", problem)
            return False
        try:
            good = self.trust.verify_head(t, batch.epoch, batch.records[-1], batch.sig,
                                          batch.skip)
        except UntrustedTerminal as err:
            self._reject("", err.kind, f"batch: {err}"[:300])
            return False
        if not good:
            self.stats["bad_signatures"] += 1
            self._reject(t, "bad_signature", f"head seq {batch.records[-1].seq} of epoch "
                         f"{batch.epoch!r}: signature does not verify with the enrolled key")
        return good

    def _ack(self, batch: ParsedBatch, result: IngestResult) -> bytes:
        """The ack for ``batch`` once stored: v1 ``{"v":1,"seq":N}`` or the signed v2."""
        if batch.version == 1 or self.trust is None:
            return json.dumps({"v": 1, "seq": result.contiguous_seq},
                              separators=(",", ":")).encode()
        head = batch.records[-1]
        return encode_ack(self.trust.signing_key, SignedAck(
            batch.terminal, batch.epoch, result.contiguous_seq, result.contiguous_hash,
            self.store.store_id, head.seq, head.hash, batch.batch_id))

    def _on_status(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        terminal = self._sender(topic, "status")
        if terminal is None:
            return
        try:
            status = load_json(payload, 65536)
            if not isinstance(status, dict):
                raise ValueError("status is not a JSON object")
            json.dumps(status, ensure_ascii=False).encode()  # storable text?
        except (ValueError, RecursionError, UnicodeEncodeError) as err:
            self._reject(terminal, "malformed_status", str(err)[:200])
            return
        self.store.record_status(terminal, status)
        if self.probe is not None:
            self.probe.on_status(terminal, status)
