"""Codes that only a platform can verify (e.g. the national electronic SSC code service).

An :class:`OnlineScheme` hands the code text to an :class:`OnlineVerifyClient` on a small
worker pool and waits at most ``timeout_s`` (default 0.3 s) for the answer. It never
blocks a tap beyond that: when the terminal is offline (``is_online()`` false), when the
previous call failed or timed out (a back-off of ``backoff_s``), or when every worker is
still busy with a hung call, it answers ``ONLINE_UNAVAILABLE`` at once. That answer is the profile's offline fallback
(its ``online_unavailable`` prompt, by default "请出示实体卡"), journaled with the detail
``offline_fallback:<why>``: ``offline``, ``backoff``, ``busy``, ``timeout``, ``down``,
``garbage`` (see :func:`failure`).

The decision path otherwise never touches the network; this is the one, bounded exception,
and only for schemes that cannot be verified offline.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from agent.model import Credential, Reason, Rejection

__all__ = ["FALLBACK", "OnlineScheme", "OnlineVerifyClient", "failure"]

FALLBACK = "offline_fallback"
"""Prefix of the journaled detail of a tap decided by the offline fallback."""

log = logging.getLogger(__name__)


class OnlineVerifyClient(Protocol):
    """Talks to a verification service. May raise (network errors, ``TimeoutError``)."""

    def verify(self, text: str, timeout_s: float) -> Credential | Rejection:
        """The service's verdict on ``text``, within about ``timeout_s`` seconds."""
        ...


class OnlineScheme:
    """A :class:`~agent.codes.scheme.CodeScheme` verified by a remote service, time-bounded."""

    def __init__(
        self,
        prefixes: tuple[str, ...] | list[str],
        client: OnlineVerifyClient,
        *,
        kind: str = "qr:online",
        timeout_s: float = 0.3,
        is_online: Callable[[], bool] = lambda: True,
        backoff_s: float = 30.0,
        max_workers: int = 2,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or timeout_s > 2.0:
            raise ValueError(f"timeout_s must be in (0, 2] seconds, got {timeout_s}")
        self.kind = kind
        self.prefixes = tuple(prefixes)
        self._client = client
        self._timeout = timeout_s
        self._is_online = is_online
        self._backoff = backoff_s
        self._mono = monotonic
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers,
                                           thread_name_prefix=f"online-{kind}")
        self._slots = threading.BoundedSemaphore(max_workers)
        self._down_until = 0.0

    def verify(self, text: str, *, now: float, clock_quality: str) -> Credential | Rejection:
        """Ask the service, bounded by ``timeout_s``; never raises."""
        if not self._is_online():
            return self._unavailable("offline")
        if self._mono() < self._down_until:
            return self._unavailable("backoff")
        if not self._slots.acquire(blocking=False):
            return self._unavailable("busy")
        try:
            fut = self._pool.submit(self._client.verify, text, self._timeout)
        except RuntimeError:  # pool shut down
            self._slots.release()
            return self._unavailable("closed")
        fut.add_done_callback(lambda _f: self._slots.release())
        try:
            result = fut.result(timeout=self._timeout)
        except cf.TimeoutError:
            self._down_until = self._mono() + self._backoff
            log.warning("online verification (%s) timed out after %.0f ms; backing off %.0f s",
                        self.kind, self._timeout * 1000, self._backoff)
            return self._unavailable("timeout")
        except Exception as err:
            self._down_until = self._mono() + self._backoff
            why = failure(err)
            log.warning("online verification (%s) failed (%s: %s); backing off %.0f s",
                        self.kind, why, type(err).__name__, self._backoff)
            return self._unavailable(why)
        if isinstance(result, Credential | Rejection):
            return result
        log.error("online client for %s returned %s", self.kind, type(result).__name__)
        return self._unavailable("bad_client_result")

    def close(self) -> None:
        """Stop the worker pool without waiting for hung calls. Safe twice."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _unavailable(self, why: str) -> Rejection:
        """The offline fallback: ``online_unavailable`` (the profile's prompt, e.g.
        "请出示实体卡"), journaled with detail ``offline_fallback:<why>``."""
        return Rejection(Reason.ONLINE_UNAVAILABLE, f"{FALLBACK}:{why}", kind=self.kind)


def failure(err: BaseException) -> str:
    """Why a verification call failed, for the journal: ``timeout`` (the socket's own),
    ``down`` (refused, reset, a certificate the terminal does not trust: any ``OSError``),
    ``garbage`` (an answer that is no verdict: a ``ValueError``), else ``error:<type>``."""
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, OSError):     # first: a failed TLS verification is a ValueError too
        return "down"
    if isinstance(err, ValueError):
        return "garbage"
    return f"error:{type(err).__name__}"
