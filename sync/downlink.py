"""Downlink: policy bundles from the hub to this terminal.

:class:`Downlink` subscribes to the retained ``ykt/v1/policy/{channel}/manifest``; each
envelope that arrives (at connect: the retained one) is handed to a worker thread, which
runs :meth:`agent.policy.PolicyApplier.offer`. Only the newest envelope matters: one
arriving during an apply replaces any still waiting. It also follows the channel's
online hotlist (``ykt/v1/online/{channel}/hotlist``, :class:`agent.policy.online.
OnlineHotlist`) on the same worker thread, hotlist first: a waiting online manifest is
applied before a waiting full bundle (never during one: the two never write at once). A refused bundle is not retried
(the reason is in :meth:`Downlink.status`); a failed apply (download, interrupted stage)
is retried with exponential backoff (``retry_min_s`` doubling to ``retry_max_s``), a
snapshot deferred by the busy hours (:mod:`agent.policy.schedule`, state ``deferred``)
when they end; a newer envelope arriving meanwhile is taken at once.

Small parts come inline in the envelope; large ones from the URL the manifest names via
:class:`HttpPartFetcher`, which resumes a dropped transfer with ``Range`` from the bytes
already on disk (``<sha256>.partial``) and checks size and SHA-256 before handing the
part over. Nothing here is on the tap path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.policy.apply import PolicyApplier
from agent.policy.errors import (
    ApplyFailed,
    BundleRefused,
    PolicyError,
    Refusal,
    SnapshotDeferred,
)
from agent.policy.manifest import PartRef
from agent.policy.online import OnlineHotlist
from sync.link import Link, MqttSettings
from sync.topics import TopicFilter, online_hotlist, policy_manifest

__all__ = ["Downlink", "HttpPartFetcher"]

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class HttpPartFetcher:
    """Downloads parts over HTTP(S) with resume.

    ``attempts`` connections per part (each resuming where the last stopped, waiting
    ``backoff_s`` × attempt between them); ``timeout_s`` per socket operation; ``cafile``
    to verify an HTTPS server. ``bytes_transferred`` counts body bytes received.
    """

    def __init__(self, *, attempts: int = 5, backoff_s: float = 0.5, timeout_s: float = 30.0,
                 cafile: str | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._ctx = ssl.create_default_context(cafile=cafile) if cafile else None
        self._sleep = sleep
        self.bytes_transferred = 0
        self.resumes = 0

    def fetch(self, ref: PartRef, url: str, dest: Path) -> None:
        """Download ``url`` to ``dest`` (``dest.partial`` meanwhile). Raises
        :class:`BundleRefused` (``part_hash_mismatch``: wrong size or hash; the partial
        file is discarded) or :class:`ApplyFailed` (``fetch_failed``: keep the partial
        file for the next attempt)."""
        partial = dest.with_name(dest.name + ".partial")
        last_err = ""
        for attempt in range(1, self.attempts + 1):
            have = partial.stat().st_size if partial.exists() else 0
            if have > ref.size:
                partial.unlink()
                have = 0
            if have < ref.size:
                try:
                    self._get(url, partial, have)
                except (OSError, urllib.error.URLError, TimeoutError) as err:
                    last_err = f"{type(err).__name__}: {err}"
                    log.warning("part %s: transfer interrupted at %d of %d bytes (%s); "
                                "resuming", ref.name, partial.stat().st_size if
                                partial.exists() else 0, ref.size, last_err)
                    self._sleep(self.backoff_s * attempt)
                    continue
            if partial.exists() and partial.stat().st_size >= ref.size:
                break
        else:
            raise ApplyFailed(Refusal.FETCH_FAILED, f"part {ref.name} from {url}: {last_err}")
        if partial.stat().st_size != ref.size or _file_sha256(partial) != ref.sha256:
            partial.unlink()
            raise BundleRefused(Refusal.PART_HASH_MISMATCH,
                                f"part {ref.name} from {url} does not match its manifest hash")
        os.replace(partial, dest)

    def _get(self, url: str, partial: Path, offset: int) -> None:
        req = urllib.request.Request(url)
        if offset:
            req.add_header("Range", f"bytes={offset}-")
            self.resumes += 1
        with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ctx) as resp:
            status = resp.status
            mode = "ab"
            if offset and status == 200:          # server ignored the Range: start over
                mode = "wb"
            elif status not in (200, 206):
                raise urllib.error.URLError(f"HTTP {status}")
            with open(partial, mode) as f:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    self.bytes_transferred += len(chunk)
                f.flush()
                os.fsync(f.fileno())


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Downlink:
    """Follows one policy channel for one terminal.

    ``link`` may be shared with the uplink (the subscription is added to it); without it
    the downlink opens its own connection from ``settings`` as ``client_id``.
    :meth:`start`/:meth:`stop` (safe twice). Listen for applied policies with
    ``applier.add_listener``.
    """

    def __init__(self, applier: PolicyApplier, *, settings: MqttSettings | None = None,
                 link: Link | None = None, client_id: str = "ykt-downlink",
                 fetcher: HttpPartFetcher | None = None, retry_min_s: float = 1.0,
                 retry_max_s: float = 300.0) -> None:
        if link is None and settings is None:
            raise ValueError("Downlink needs a link or MQTT settings")
        self.applier = applier
        self._own_link = link is None
        self.link = link if link is not None else Link(settings, client_id)  # type: ignore[arg-type]
        self.fetcher = fetcher or HttpPartFetcher()
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._pending_online: bytes | None = None
        self.online = OnlineHotlist(applier, clock=applier.clock)
        self.online_refusal = ""
        self.online_refusal_detail = ""
        self._stop = False
        self._thread: threading.Thread | None = None
        self.state = "idle"
        self.refusal: str = ""
        self.refusal_detail: str = ""
        self.link.subscribe(TopicFilter(policy_manifest(applier.channel).value),
                            self._on_manifest)
        self.link.subscribe(TopicFilter(online_hotlist(applier.channel).value),
                            self._on_online)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="policy-downlink", daemon=True)
        self._thread.start()
        if self._own_link:
            self.link.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._own_link:
            self.link.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def offer(self, payload: bytes) -> None:
        """Queue an envelope as if it came from the broker (tools, tests)."""
        self._on_manifest("", payload)

    def status(self) -> dict[str, Any]:
        """Fields for the status heartbeat: applied policy, state, last refusal."""
        info = self.applier.store.info
        return {"policy": info.label, "policy_hash": info.hash[:16],
                "policy_expires": info.expires, "policy_state": self.state,
                "policy_refusal": self.refusal, "policy_refusal_detail": self.refusal_detail[:200],
                **self.online.status(), "hotlist_refusal": self.online_refusal,
                "hotlist_refusal_detail": self.online_refusal_detail[:200]}

    def offer_online(self, payload: bytes) -> None:
        """Queue an online hotlist envelope as if it came from the broker."""
        self._on_online("", payload)

    def _on_online(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        with self._cond:
            self._pending_online = bytes(payload)
            self._cond.notify_all()

    def _apply_online(self, payload: bytes) -> bool:
        """Apply an online manifest; False when it failed in a way worth retrying."""
        try:
            self.online.offer(payload)
        except BundleRefused as err:
            self.online_refusal, self.online_refusal_detail = err.refusal.value, err.detail
        except Exception as err:    # the store busy, a disk error: retried
            log.warning("online hotlist not applied (%r); retrying", err)
            self.online_refusal, self.online_refusal_detail = Refusal.APPLY_FAILED.value, \
                repr(err)
            return False
        else:
            self.online_refusal = self.online_refusal_detail = ""
        return True

    def _on_manifest(self, topic: str, payload: bytes) -> None:
        if not payload:
            return                      # retained message cleared
        with self._cond:
            self._pending = bytes(payload)
            self._cond.notify_all()

    def _work(self) -> None:
        delay = self.retry_min_s
        while True:
            with self._cond:
                while self._pending is None and self._pending_online is None \
                        and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                online, self._pending_online = self._pending_online, None
                if online is None:
                    payload, self._pending = self._pending, None
            if online is not None:          # hotlist first
                if not self._apply_online(online):
                    with self._cond:
                        if self._pending_online is None:
                            self._pending_online = online
                        self._cond.wait_for(lambda: self._stop, timeout=self.retry_min_s)
                continue
            assert payload is not None
            self.state = "applying"
            try:
                self.online.note_offline(payload)
                self.applier.offer(payload, self.fetcher)
            except BundleRefused as err:
                self._refused(err, "refused")
                continue
            except Exception as err:   # ApplyFailed, or a bug: keep the policy, retry later
                if not isinstance(err, PolicyError):
                    log.exception("policy apply crashed; will retry")
                    err = ApplyFailed(Refusal.APPLY_FAILED, repr(err))
                deferred = isinstance(err, SnapshotDeferred)   # busy hours: retry at their end
                self._refused(err, "deferred" if deferred else "retrying")
                wait = err.retry_after_s if isinstance(err, SnapshotDeferred) else delay
                with self._cond:   # ... or at once when something newer arrives
                    if self._pending is None:
                        self._pending = payload
                    self._cond.wait_for(functools.partial(self._newer_or_stop, payload),
                                        timeout=wait)
                if not deferred:
                    delay = min(self.retry_max_s, delay * 2)
                continue
            delay = self.retry_min_s
            self.state = "applied"
            self.refusal = self.refusal_detail = ""

    def _newer_or_stop(self, payload: bytes) -> bool:
        """Stop the wait: stopping, a newer manifest, or a loss report (hotlist first, also
        while a snapshot waits for the end of the busy hours)."""
        return (self._stop or self._pending is not payload
                or self._pending_online is not None)

    def _refused(self, err: PolicyError, state: str) -> None:
        self.state = state
        self.refusal = err.refusal.value
        self.refusal_detail = err.detail
