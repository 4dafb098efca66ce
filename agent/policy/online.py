"""Online hotlist deltas (挂失 in seconds): the terminal side, and the manifest they carry.

A channel's full bundles are signed offline (:mod:`agent.policy.apply`). A lost card must
not wait for that: the hub signs **online hotlist manifests** with an *online hotlist key*
that the signer root delegates (``Root.hotlist_keys``, after TUF's delegated roles). Such a
manifest may carry one thing only, an inline ``hotlist.delta`` part; anything else signed
by that key (rules, entitlements, an offline manifest) is refused ``outside_role``, and the
online key never counts for an offline manifest (``unknown_signer``). So the key that signs
rules and entitlements stays offline.

Online manifests have their own topic (``ykt/v1/online/{channel}/hotlist``, retained) and
their own version line (``sequence``): they never overwrite the retained full bundle nor
collide with its versions. Each one carries *every* online change since the last offline
build that included them (``since``), so the retained message alone brings a terminal up
to date. Ordering rules (``docs/policy.md``):

1. a sequence not above the applied one is refused ``rollback`` (the same one with the
   same hash is a no-op), an expired one ``expired``;
2. its rows go into the store's hotlist overlay in one transaction (seen by the next tap);
   the manifest's rows are kept in ``<store>.online.json``;
3. after every offline apply (a listener, between two taps) those rows are applied again
   unless the offline manifest's ``online_through`` says it includes them
   (``online_through >= sequence``: the rows are dropped, the sequence kept). An offline
   bundle built before a loss report can therefore never undo it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.journal import parse_utc
from agent.policy.apply import AppliedPolicy, PolicyApplier
from agent.policy.errors import BundleRefused, Refusal
from agent.policy.manifest import Channel, Envelope, PartRef, UtcStamp, sha256_hex
from agent.policy.parts import read_rows
from agent.policy.signing import hotlist_role, verify_signed, walk_roots

__all__ = ["ONLINE_TYPE", "OnlineHotlist", "OnlineManifest"]

log = logging.getLogger(__name__)

ONLINE_TYPE = "ykt-online-hotlist"
_INT64 = 2**63 - 1


class OnlineManifest(BaseModel):
    """The signed description of one online hotlist change set of a channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ykt-online-hotlist"] = "ykt-online-hotlist"
    channel: Channel
    sequence: int = Field(ge=1, le=_INT64, description="the online version line: +1 per change")
    since: int = Field(0, ge=0, le=_INT64, description="changes after this sequence are "
                       "carried (the offline builds include the ones up to it)")
    created: UtcStamp = Field(description="RFC 3339 UTC")
    expires: UtcStamp = Field(description="RFC 3339 UTC")
    root_serial: int = Field(ge=1, le=_INT64)
    parts: list[PartRef] = Field(max_length=1)


def check_online_manifest(env: Envelope) -> OnlineManifest:
    """The online manifest of ``env`` (signatures not checked here), refused
    ``outside_role`` unless it is an online hotlist manifest whose only part is an inline
    hotlist delta, ``malformed`` if it does not parse."""
    signed = env.manifest.signed
    if signed.get("type") != ONLINE_TYPE:
        raise BundleRefused(Refusal.OUTSIDE_ROLE, f"a {signed.get('type')!r} document on the "
                            "online hotlist path: the online key signs hotlist deltas only")
    parts = signed.get("parts")
    if not isinstance(parts, list):
        raise BundleRefused(Refusal.MALFORMED, "online manifest: 'parts' must be a list")
    for p in parts:
        if not isinstance(p, dict) or (p.get("name"), p.get("kind"), p.get("mode")) != (
                "hotlist.delta", "hotlist", "delta"):
            name = p.get("name") if isinstance(p, dict) else p
            raise BundleRefused(Refusal.OUTSIDE_ROLE, f"part {name!r} in an online manifest: "
                                "the online hotlist key may sign hotlist deltas only")
    try:
        m = OnlineManifest.model_validate(signed)
    except ValidationError as err:
        raise BundleRefused(Refusal.MALFORMED, f"online manifest: {err.errors()[0]['loc']}: "
                            f"{err.errors()[0]['msg']}") from None
    for ref in m.parts:
        data = env.inline_bytes(ref.sha256)
        if data is None or len(data) != ref.size or sha256_hex(data) != ref.sha256:
            raise BundleRefused(Refusal.PART_HASH_MISMATCH,
                                "the online hotlist delta is not inline or does not match")
    if set(env.inline) - {r.sha256 for r in m.parts}:
        raise BundleRefused(Refusal.MIX_AND_MATCH, "inline data not named by the manifest")
    return m


class OnlineHotlist:
    """Applies online hotlist manifests of ``applier``'s channel to its store.

    Call :meth:`offer` from the same thread that runs the applier's offers (the
    :class:`sync.downlink.Downlink` worker): the two never write at once. It registers
    itself as a listener of ``applier`` (rule 3 above). ``state_path`` defaults to
    ``<store>.online.json``; ``clock`` gives epoch seconds.
    """

    def __init__(self, applier: PolicyApplier, *, state_path: str | Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.applier = applier
        self.store = applier.store
        self.clock = clock
        self.path = Path(state_path or str(self.store.path) + ".online.json")
        self._state = self._load()
        self._through: dict[str, int] = {}     # offline manifest hash → online_through
        self._cond = threading.Condition()
        self.applied = 0
        """Online manifests applied since start (see :meth:`wait_applied`)."""
        self.refused = 0
        applier.add_listener(self._after_offline)

    # -- state ------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("channel") == self.applier.channel:
                return doc
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            log.error("online hotlist state %s unreadable (%s); waiting for the next one",
                      self.path, err)
        return {"channel": self.applier.channel, "sequence": 0, "hash": "", "adds": [],
                "removes": []}

    def _save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @property
    def sequence(self) -> int:
        """The online sequence applied (0: none)."""
        return int(self._state["sequence"])

    def status(self) -> dict[str, Any]:
        """Fields for the status heartbeat."""
        return {"hotlist_online": self.sequence}

    def wait_applied(self, count: int, timeout: float) -> bool:
        """Wait until :attr:`applied` reaches ``count``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.applied >= count, timeout)

    # -- offers -----------------------------------------------------------------------
    def note_offline(self, payload: bytes) -> None:
        """Remember an offline envelope's ``online_through`` before it is offered, keyed
        by its manifest hash (the listener trusts it only for the hash that was verified
        and applied)."""
        try:
            env = Envelope.parse(payload)
            through = int(env.manifest.signed.get("online_through") or 0)
            self._through = {env.digest(): through}
        except (BundleRefused, ValueError, TypeError):
            self._through = {}

    def offer(self, payload: bytes) -> int | None:
        """Verify and apply an online hotlist envelope; return its sequence, or None
        when it is the one applied. Raises :class:`BundleRefused`."""
        try:
            return self._offer(payload)
        except BundleRefused as err:
            self.refused += 1
            log.warning("online hotlist manifest not applied: %s", err,
                        extra={"refusal": err.refusal.value})
            raise

    def _offer(self, payload: bytes) -> int | None:
        env = Envelope.parse(payload)
        root = walk_roots(env, self.applier.trusted_root())
        m_type = env.manifest.signed.get("type")
        verify_signed(env.manifest.signed, env.manifest.signatures, hotlist_role(root),
                      f"online manifest {env.manifest.signed.get('channel')}"
                      f"#{env.manifest.signed.get('sequence')} ({m_type})")
        m = check_online_manifest(env)
        if m.channel != self.applier.channel:
            raise BundleRefused(Refusal.WRONG_CHANNEL, f"online manifest for {m.channel}, "
                                f"terminal follows {self.applier.channel}")
        if m.root_serial != root.serial:
            raise BundleRefused(Refusal.UNKNOWN_SIGNER, f"online manifest names root "
                                f"#{m.root_serial}, verified chain ends at #{root.serial}")
        digest = env.digest()
        if m.sequence == self.sequence and digest == self._state["hash"]:
            return None
        if m.sequence <= self.sequence:
            raise BundleRefused(Refusal.ROLLBACK, f"online sequence {m.sequence}, applied "
                                f"{self.sequence}")
        if parse_utc(m.expires) < self.clock():
            raise BundleRefused(Refusal.EXPIRED, f"online manifest {m.sequence} expired "
                                f"{m.expires}")
        adds: list[list[str]] = []
        removes: list[str] = []
        if m.parts:
            data = env.inline_bytes(m.parts[0].sha256) or b""
            with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".part") as tmp:
                tmp.write(data)
                tmp.flush()
                for row in read_rows(tmp.name, "hotlist", "delta"):
                    if row[0] == "+":
                        adds.append(list(row[1:]))
                    else:
                        removes.append(row[1])
        self._write(adds, removes)
        self._state = {"channel": m.channel, "sequence": m.sequence, "hash": digest,
                       "adds": adds, "removes": removes}
        self._save()
        log.info("online hotlist #%d of %s applied (%d listed, %d unlisted)", m.sequence,
                 m.channel, len(adds), len(removes))
        with self._cond:
            self.applied += 1
            self._cond.notify_all()
        return m.sequence

    def _write(self, adds: list[list[str]], removes: list[str]) -> None:
        """One transaction into the hotlist overlay, the background merge stopped meanwhile
        (it may hold a write lock while paused for taps)."""
        compactor = self.applier.compactor
        compactor.stop()
        try:
            self.store.apply(hotlist=[tuple(a) for a in adds], remove_hotlist=removes)
        finally:
            compactor.start()

    def _after_offline(self, applied: AppliedPolicy) -> None:
        """Rule 3: after an offline switch (between two taps), apply the kept rows again
        unless the new version includes them."""
        if applied.mode == "startup" or not (self._state["adds"] or self._state["removes"]):
            return
        through = self._through.get(applied.info.hash, 0)
        if through >= self.sequence:
            self._state = {**self._state, "adds": [], "removes": []}
            self._save()
            return
        self.store.apply(hotlist=[tuple(a) for a in self._state["adds"]],
                         remove_hotlist=self._state["removes"])
        log.info("online hotlist #%d kept over %s", self.sequence, applied.info.label)
