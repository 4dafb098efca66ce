"""Uplink: send the journal to the hub, resend until the hub acknowledges.

The journal is the store-and-forward buffer. The uplink keeps no copy of its own: it
reads records after ``journal.acked_seq`` and publishes them in batches on
``ykt/v1/t/{terminal}/tx`` (QoS 1), keeping a sliding window of several batches in flight.
Only the hub's ``ack`` (``{"v":1,"seq":N}``: every record up to N is durably committed at
the hub) calls :meth:`agent.journal.Journal.mark_acked`; a broker PUBACK never does.

After a reconnect, or when the oldest batch in flight is not acknowledged within
``ack_timeout_s``, sending restarts from ``acked_seq + 1``; the hub is idempotent on
(terminal, seq), so a resend never duplicates. The wire format is in ``docs/protocol.md``.

The uplink also publishes a retained status heartbeat and prunes acknowledged records
older than ``retention_s``.

With an identity (:class:`~sync.acks.UplinkIdentity`) it speaks protocol v2
(``docs/protocol.md`` §10): each batch carries the journal's epoch and the signature of
its chain head; only an ack signed by the hub, for this terminal and epoch, whose hash is
the terminal's own record and which answers a batch it sent counts; a lower such ack, or
one from another hub store, makes the terminal resend what it still holds and report
what it cannot (``records_lost_at_hub``). Without one it speaks the legacy v1.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.journal import Journal, JournalError, utc_stamp
from sync.acks import (
    Ignored,
    SentBatch,
    SentBatches,
    UplinkIdentity,
    encode_batch,
    encode_batch_v2,
    fit_batch,
    new_batch_id,
    parse_ack,
)
from sync.link import Link, MqttSettings, NotConnected
from sync.signed import BadSignature, SignedAck, parse_ack_v2, parse_hub_status
from sync.topics import HUB_STATUS_ALL, TerminalTopics, TopicFilter

__all__ = ["PROTOCOL_VERSION", "Uplink", "UplinkSettings", "encode_batch", "parse_ack"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
"""The ``v`` of tx, ack and status payloads."""


class UplinkSettings(BaseModel):
    """Tuning of the uplink (an optional ``[uplink]`` config section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_records: int = Field(default=500, ge=1, le=5000, description="records per tx message")
    window_batches: int = Field(default=8, ge=1, le=32,
                                description="tx messages in flight before waiting for acks")
    ack_timeout_s: float = Field(default=10.0, gt=0, description="resend from the last ack if the "
                                 "oldest batch in flight is not acknowledged in this many s")
    status_interval_s: float = Field(default=30.0, gt=0, description="status heartbeat period, s")
    retention_s: float = Field(default=7 * 86400.0, ge=0, description="keep acknowledged records "
                               "this many seconds before pruning them")
    prune_interval_s: float = Field(default=600.0, gt=0, description="how often to prune, s")
    hub_online_resend_s: float = Field(default=10.0, ge=0, description="at most one resend "
                                       "triggered by hub 'online' messages per this many s")


RECONNECT_GRACE_S = 60.0
"""After a (re)connect, unanswered batches are not reported for this long (s): the hub is
usually reconnecting after the same broker outage."""


@dataclass(slots=True)
class _Batch:
    first: int
    last: int
    sent_at: float
    batch_id: str = ""
    connection: int = 0          # the link's connection count when it was sent


class Uplink:
    """Sends ``journal`` to the hub as ``terminal`` over the broker in ``settings``.

    ``status`` returns extra fields for the status heartbeat (policy version, clock…);
    its exceptions are logged and ignored. ``retention_s`` (seconds) overrides
    ``options.retention_s``. ``ValueError`` if ``terminal`` is not a valid id. Start with :meth:`start`, call :meth:`notify`
    after each append, stop with :meth:`stop` (both safe twice).
    """

    def __init__(self, journal: Journal, settings: MqttSettings, terminal: str,
                 status: Callable[[], dict[str, Any]] | None = None, *,
                 options: UplinkSettings | None = None, retention_s: float | None = None,
                 client_id: str | None = None, identity: UplinkIdentity | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.journal = journal
        self.terminal = terminal
        self.topics = TerminalTopics(terminal)
        self.options = options or UplinkSettings()
        if retention_s is not None:  # shortcut for the one option every agent sets
            self.options = self.options.model_copy(update={"retention_s": float(retention_s)})
        self._status_fn = status
        self._clock = clock
        self._cond = threading.Condition()
        self._wake = False
        self._resend = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._inflight: deque[_Batch] = deque()
        self._next_seq = journal.acked_seq + 1
        self._acked_seen = journal.acked_seq
        self._timeouts_in_row = 0
        self._connected_at = 0.0     # when the link last (re)connected (uplink clock, s)
        self.identity = identity
        self.epoch = journal.epoch if identity is not None else ""
        self._sent = SentBatches()
        self._hub_store = journal.get_meta("hub_store") if identity is not None else None
        self._last_online_resend: float | None = None
        self.stats: dict[str, int] = {"batches_sent": 0, "records_sent": 0, "resends": 0,
                                      "acks": 0, "malformed_acks": 0, "acks_beyond": 0,
                                      "pruned": 0, "hub_online_resends": 0,
                                      "hub_online_limited": 0, "resyncs": 0}
        """Counters (monotonic over this uplink's life), also sent in the heartbeat; the
        kinds of ignored messages (``forged_acks``…) are added when first seen."""
        self._ignored = Ignored(self.stats)
        self.link = Link(settings, client_id or f"ykt-t-{terminal}",
                         status_topic=self.topics.status,
                         on_connect=self._on_connect, on_disconnect=self._on_disconnect)
        self.link.subscribe(TopicFilter(str(self.topics.ack)), self._on_ack, qos=1)
        self.link.subscribe(HUB_STATUS_ALL, self._on_hub_status, qos=1)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background and start sending. Safe to call twice."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"uplink-{self.terminal}",
                                            daemon=True)
            self._thread.start()
        self.link.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending, publish the offline status and disconnect. Safe to call twice."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        self.link.stop(timeout)

    def notify(self) -> None:
        """Wake the sender: a record was appended. Cheap; never blocks on the network."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the hub has acknowledged every record journaled so
        far (``journal.last_seq`` at the time of the call). Returns whether it has."""
        target = self.journal.last_seq
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.journal.acked_seq < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    # -- status --------------------------------------------------------------------------
    def status_payload(self) -> dict[str, Any]:
        """The heartbeat published retained on ``t/{terminal}/status``."""
        extra: dict[str, Any] = {}
        if self._status_fn is not None:
            try:
                extra = dict(self._status_fn())
            except Exception:
                log.exception("status callable failed; heartbeat sent without its fields")
        j = self.journal
        extra.update(v=PROTOCOL_VERSION, state="online", terminal=self.terminal,
                     time=utc_stamp(time.time()), last_seq=j.last_seq, acked_seq=j.acked_seq,
                     outbox=j.pending_count, uplink=dict(self.stats))
        if self.identity is not None:
            extra.update(v=2, epoch=self.epoch, hub_store=self._hub_store)
        lost = j.get_meta("records_lost_at_hub")
        if lost:
            extra["records_lost_at_hub"] = json.loads(lost)
        return extra

    def publish_status(self) -> bool:
        """Publish the heartbeat now (retained, QoS 1). Returns False when not connected."""
        try:
            payload = json.dumps(self.status_payload(), separators=(",", ":"))
            self.link.publish(self.topics.status, payload, qos=1, retain=True)
        except NotConnected:
            return False
        return True

    def prune(self) -> int:
        """Delete the journal's acknowledged records older than ``retention_s`` (by the
        journal's clock; the newest record is always kept). The sender thread calls this
        every ``prune_interval_s``. Returns how many records were deleted; raises
        :class:`~agent.journal.JournalError`/``sqlite3.Error`` if the journal fails."""
        pruned = self.journal.prune(self.options.retention_s)
        self.stats["pruned"] += pruned
        if pruned:
            log.info("pruned %d acknowledged journal records", pruned)
        return pruned

    # -- callbacks (link thread) ---------------------------------------------------------
    def _on_connect(self) -> None:
        self._connected_at = self._clock()
        self.publish_status()
        with self._cond:
            self._resend = True
            self._wake = True
            self._cond.notify_all()

    def _on_disconnect(self) -> None:
        self.notify()

    def _on_hub_status(self, topic: str, payload: bytes) -> None:
        """A hub came (back) online and subscribed: resend the outbox now, not at timeout
        (at most once per ``hub_online_resend_s``; with an identity, only if signed)."""
        if not payload:
            return  # a cleared retained status
        try:
            state = parse_hub_status(payload, None if self.identity is None
                                     else self.identity.hub_key)
        except BadSignature as err:
            self._ignored("forged_hub_status", f"{topic}: {err}")
            return
        except ValueError as err:
            self._ignored("malformed_hub_status", f"{topic} ({len(payload)} bytes): {err}")
            return
        if state == "online" and self.journal.pending_count:
            now = self._clock()
            last = self._last_online_resend
            if last is not None and now - last < self.options.hub_online_resend_s:
                self.stats["hub_online_limited"] += 1
                return
            self._last_online_resend = now
            self.stats["hub_online_resends"] += 1
            with self._cond:
                self._resend = True
                self._wake = True
                self._cond.notify_all()

    def _on_ack(self, topic: str, payload: bytes) -> None:
        if self.identity is not None:
            self._on_signed_ack(topic, payload)
            return
        try:
            seq = parse_ack(payload)
        except ValueError as err:
            self.stats["malformed_acks"] += 1
            log.warning("malformed ack on %s (%d bytes) ignored: %s", topic, len(payload), err)
            return
        self.stats["acks"] += 1
        if seq > self.journal.last_seq:
            self.stats["acks_beyond"] += 1
            log.error("hub acked seq %d beyond last journaled seq %d: ignored", seq,
                      self.journal.last_seq)
            return
        try:
            self.journal.mark_acked(seq)
        except (JournalError, OSError) as err:
            log.error("cannot record ack %d in the journal: %s", seq, err)
            return
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _on_signed_ack(self, topic: str, payload: bytes) -> None:
        """A v2 ack: act only on a genuine, current answer to a batch this uplink sent."""
        try:
            ack = parse_ack_v2(payload, self.identity.hub_key)  # type: ignore[union-attr]
        except BadSignature as err:
            self._ignored("forged_acks", str(err))
            return
        except ValueError as err:
            self._ignored("malformed_acks", f"{topic} ({len(payload)} bytes): {err}")
            return
        if ack.terminal != self.terminal or ack.epoch != self.epoch:
            self._ignored("foreign_acks", f"ack for {ack.terminal[:64]!r} epoch "
                          f"{ack.epoch!r}, not this terminal's epoch {self.epoch!r}")
            return
        sent = self._sent.get(ack.answers_batch)
        if sent is None or (sent.last, sent.head_hash) != (ack.answers_seq, ack.answers_hash):
            self._ignored("stale_acks", f"ack {ack.seq} answers no batch recently sent")
            return
        if ack.seq > self.journal.last_seq:
            self._ignored("acks_beyond", f"ack {ack.seq} beyond last seq "
                          f"{self.journal.last_seq}")
            return
        own = self.journal.hash_at(ack.seq)
        if own is not None and own != ack.hash:
            self._ignored("mismatched_acks", f"ack {ack.seq}: hash is not our record's")
            return
        if own is None and ack.seq > self.journal.acked_seq:
            self._ignored("mismatched_acks", f"ack {ack.seq}: we hold no such record")
            return
        self.stats["acks"] += 1
        changed = self._hub_store is not None and ack.hub_store != self._hub_store
        try:
            if changed or ack.seq < sent.acked_at_send:
                self._resync(ack, "a new hub store" if changed else "a lower ack")
            elif ack.seq > self.journal.acked_seq:
                self.journal.mark_acked(ack.seq)
            if ack.hub_store != self._hub_store:
                self.journal.set_meta("hub_store", ack.hub_store)
                self._hub_store = ack.hub_store
        except (JournalError, OSError, sqlite3.Error) as err:
            log.error("cannot record ack %d in the journal: %s", ack.seq, err)
            return
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _resync(self, ack: SignedAck, why: str) -> None:
        """The hub holds only ``1..ack.seq`` (signed, answering a batch sent after our
        acked point): resend from there, report what we no longer hold."""
        j = self.journal
        old = j.resync_acked(ack.seq)
        first = j.first_seq
        self.stats["resyncs"] += 1
        self._sent.clear()  # acks of the hub's earlier life are stale from now on
        log.warning("hub store %s (%s) holds our records only up to %d (we had %d acked): "
                    "resending from %d", ack.hub_store, why, ack.seq, old, ack.seq + 1)
        if ack.seq + 1 < first:
            lost = {"epoch": self.epoch, "from": ack.seq + 1, "to": first - 1,
                    "hub_store": ack.hub_store, "time": utc_stamp(time.time())}
            ranges = json.loads(j.get_meta("records_lost_at_hub") or "[]")
            ranges.append(lost)
            j.set_meta("records_lost_at_hub", json.dumps(ranges[-20:]))
            log.error("records %d..%d lost at the hub (store %s) and already pruned here: "
                      "records_lost_at_hub", lost["from"], lost["to"], ack.hub_store)
            j.append({"event": "records_lost_at_hub", "lost_from": lost["from"],
                      "lost_to": lost["to"], "hub_store": ack.hub_store})
        with self._cond:
            self._resend = True

    # -- sender thread -------------------------------------------------------------------
    def _run(self) -> None:
        opts = self.options
        next_status = self._clock() + opts.status_interval_s
        next_prune = self._clock()
        while True:
            with self._cond:
                if self._stopping:
                    return
                if not self._wake:
                    self._cond.wait(0.25)
                self._wake = False
                if self._stopping:
                    return
                resend, self._resend = self._resend, False
            now = self._clock()
            try:
                if self.link.connected:
                    self._pump(now, resend)
                    if now >= next_status:
                        self.publish_status()
                        next_status = now + opts.status_interval_s
                elif resend:
                    with self._cond:
                        self._resend = True
                if now >= next_prune:
                    next_prune = now + opts.prune_interval_s
                    self.prune()
            except Exception:
                log.exception("uplink step failed; retrying")
                with self._cond:
                    self._resend = True
                time.sleep(0.5)

    def _pump(self, now: float, resend: bool) -> None:
        opts = self.options
        acked = self.journal.acked_seq
        inflight = self._inflight
        while inflight and inflight[0].last <= acked:
            inflight.popleft()
        if acked > self._acked_seen:
            self._acked_seen, self._timeouts_in_row = acked, 0
        # sent on a connection that has since dropped: resent now, quietly (the link
        # reported the outage); not a stall of the hub
        if inflight and inflight[0].connection != self.link.connects:
            resend = True
        if not resend and inflight and now - inflight[0].sent_at > opts.ack_timeout_s:
            # warn once per stall (the hub may be down for hours), then only at debug level;
            # not at all while the broker is away: the link reported that outage already
            # ... nor right after a reconnect: the hub comes back from the same outage
            # (its signed "online" status then triggers the resend)
            loud = (self._timeouts_in_row == 0 and self.link.connected
                    and now - self._connected_at > RECONNECT_GRACE_S)
            log.log(logging.WARNING if loud else logging.DEBUG,
                    "no ack for seq %d..%d within %.1f s; resending from %d",
                    inflight[0].first, inflight[0].last, opts.ack_timeout_s, acked + 1)
            self._timeouts_in_row += 1
            self.stats["resends"] += 1
            resend = True
        if resend:
            inflight.clear()
            self._next_seq = acked + 1
        self._next_seq = max(self._next_seq, acked + 1)
        last = self.journal.last_seq
        while len(inflight) < opts.window_batches and self._next_seq <= last:
            rows = self.journal.raw_records(self._next_seq - 1, opts.batch_records)
            if not rows:
                break
            skip = None
            if rows[0][0] != self._next_seq:  # pruned, then lost at the hub (reported)
                log.warning("journal has no record %d (next is %d); sending from there",
                            self._next_seq, rows[0][0])
                skip = (self._next_seq, rows[0][0] - 1)
            batch_id = "" if self.identity is None else new_batch_id()
            key = None if self.identity is None else self.identity.key
            rows, payload = fit_batch(       # sized in bytes from the broker's CONNACK
                rows, (lambda r: encode_batch(self.terminal, r)) if key is None else
                (lambda r, k=key, b=batch_id, g=skip:     # type: ignore[misc]
                 encode_batch_v2(self.terminal, self.epoch, r, k, b, g)),
                self.link.max_payload(self.topics.tx))
            if batch_id:
                self._sent.add(batch_id, SentBatch(rows[0][0], rows[-1][0], rows[-1][2],
                                                   acked))
            try:
                self.link.publish(self.topics.tx, payload, qos=1)
            except NotConnected:
                return  # resent after the reconnect; the journal still holds them
            inflight.append(_Batch(rows[0][0], rows[-1][0], now, batch_id,
                                   self.link.connects))
            self._next_seq = rows[-1][0] + 1
            self.stats["batches_sent"] += 1
            self.stats["records_sent"] += len(rows)
