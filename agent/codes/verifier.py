"""The agent's entry point for scanned code text: :class:`CodeVerifier`.

It owns the scheme registry (``YKT1:`` built in; other schemes, such as an
:class:`~agent.codes.online.OnlineScheme`, added with :meth:`CodeVerifier.register`), the
replay cache and the time window, and turns any text into a
:class:`~agent.model.Credential` or a :class:`~agent.model.Rejection`. It never raises
for bad input and never logs a code's full text. Hotlist and entitlement checks are the
decision engine's job, after this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.codes.replay import ReplayCache
from agent.codes.scheme import CodeScheme, SchemeRegistry
from agent.codes.trust import TrustStore
from agent.codes.ykt1 import MAX_TEXT, Ykt1Scheme
from agent.model import Credential, Reason, Rejection
from agent.pseudonym import Pseudonymizer

__all__ = ["CodeVerifier", "build_verifier", "redact"]

log = logging.getLogger(__name__)


def redact(text: str) -> str:
    """A loggable stand-in for a code text: its prefix and length only."""
    head = text[:5] if text[:5].isascii() and text[:5].isprintable() else "?"
    return f"{head}…({len(text)} chars)"


class CodeVerifier:
    """Verifies scanned code texts offline (and, for online schemes, within a short timeout).

    ``trust`` is the (runtime-replaceable) store of trusted issuer keys. A code's ``iat``
    may lie ``window_back_s`` seconds behind and ``window_ahead_s`` ahead of ``now``,
    widened per clock quality by ``allowance_s`` (default synced 0, rtc 120, unsynced
    600 s). ``clock`` gives wall time in epoch seconds. ``pseudonymizer`` keys credential
    keys with the deployment key (recommended; otherwise an unkeyed hash of the
    certificate id is used).
    """

    def __init__(
        self,
        trust: TrustStore,
        *,
        window_back_s: float = 60.0,
        window_ahead_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        allowance_s: Mapping[str, float] | None = None,
        pseudonymizer: Pseudonymizer | None = None,
        replay_max_entries: int = 200_000,
    ) -> None:
        if window_back_s <= 0 or window_ahead_s < 0:
            raise ValueError("window_back_s must be > 0 and window_ahead_s >= 0")
        self.trust = trust
        self._clock = clock
        self.replay = ReplayCache(replay_max_entries)
        self.ykt1 = Ykt1Scheme(trust, window_back_s=window_back_s,
                               window_ahead_s=window_ahead_s, allowance_s=allowance_s,
                               pseudonymizer=pseudonymizer, replay=self.replay)
        self.schemes = SchemeRegistry([self.ykt1])

    def register(self, scheme: CodeScheme) -> None:
        """Add another code scheme (by its prefixes); ``ValueError`` if a prefix is taken."""
        self.schemes.register(scheme)

    def verify(self, text: str, *, now: float | None = None, clock_quality: str = "synced"
               ) -> Credential | Rejection:
        """Verify ``text`` at wall time ``now`` (default: the clock). Never raises.

        ``clock_quality`` is ``"synced"``, ``"rtc"`` or ``"unsynced"``
        (:class:`agent.model.ClockQuality`).
        """
        t = self._clock() if now is None else now
        try:
            if not isinstance(text, str):
                return Rejection(Reason.MALFORMED_CODE, "not_text")
            if len(text) > MAX_TEXT * 4:
                result: Credential | Rejection = Rejection(
                    Reason.MALFORMED_CODE, f"too_long: {len(text)} characters")
            else:
                result = self.schemes.verify(text.strip(), now=t, clock_quality=clock_quality)
        except Exception as err:  # a plugged-in scheme misbehaved: refuse, never crash
            log.exception("code scheme raised on %s", redact(text))
            return Rejection(Reason.MALFORMED_CODE, f"unexpected:{type(err).__name__}")
        if isinstance(result, Rejection):
            log.info("code %s refused: %s (%s)", redact(text), result.reason.value,
                     result.detail)
        return result


def build_verifier(section: Any, pseudonymizer: Pseudonymizer | None = None, *,
                   clock: Callable[[], float] = time.time) -> CodeVerifier:
    """A :class:`CodeVerifier` from the agent config's ``codes`` section (attributes
    ``trust_file``, ``window_back_s``, ``window_ahead_s``; optional ``allowance_s``).

    Raises :class:`~agent.codes.trust.TrustStoreError` (a ``ValueError``) naming the trust
    file and key at fault.
    """
    trust = TrustStore.load(section.trust_file)
    return CodeVerifier(trust, window_back_s=float(getattr(section, "window_back_s", 60)),
                        window_ahead_s=float(getattr(section, "window_ahead_s", 30)),
                        allowance_s=getattr(section, "allowance_s", None),
                        clock=clock, pseudonymizer=pseudonymizer)
