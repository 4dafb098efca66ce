"""The agent's entry point for scanned code text: :class:`CodeVerifier`.

It owns the scheme registry (``YKT1:`` built in; other schemes, such as an
:class:`~agent.codes.online.OnlineScheme`, added with :meth:`CodeVerifier.register`), the
replay cache and the time window, and turns any text into a
:class:`~agent.model.Credential` or a :class:`~agent.model.Rejection`. It never raises
for bad input and never logs a code's text (only :func:`agent.pseudonym.mask_code`).
Hotlist and entitlement checks are the decision engine's job, after this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from agent.codes.replay import ReplayCache
from agent.codes.scheme import CodeScheme, SchemeRegistry
from agent.codes.trust import TrustStore
from agent.codes.ykt1 import Ykt1Scheme
from agent.model import Credential, Reason, Rejection
from agent.pseudonym import Pseudonymizer, mask_code

__all__ = ["MAX_SCANNED_TEXT", "CodeVerifier", "build_verifier"]

log = logging.getLogger(__name__)

MAX_SCANNED_TEXT = 4800
"""Longest text handed to any scheme (a QR symbol holds at most 4,296 alphanumeric
characters); each scheme applies its own, tighter limit."""


class CodeVerifier:
    """Verifies scanned code texts offline (and, for online schemes, within a short timeout).

    ``trust`` is the (runtime-replaceable) store of trusted issuer keys; ``pseudonymizer``
    (the deployment key) keys credential keys, as the hub does. A code's ``iat`` may lie
    ``window_back_s`` seconds behind and ``window_ahead_s`` ahead of ``now``, widened per
    clock quality by ``allowance_s`` (default synced 0, rtc 120, unsynced 600 s).
    ``clock`` gives wall time in epoch seconds.
    """

    def __init__(
        self,
        trust: TrustStore,
        *,
        pseudonymizer: Pseudonymizer,
        window_back_s: float = 60.0,
        window_ahead_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        allowance_s: Mapping[str, float] | None = None,
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

    def remember(self, bodies: Iterable[Mapping[str, Any]], now: float) -> int:
        """Seed the replay cache from journal record bodies (``cred.code`` and
        ``cred.code_until_ms``), so a restart forgets no code still within its window.
        Malformed entries are skipped. Returns how many codes were remembered."""
        def entries() -> Iterator[tuple[bytes, float]]:
            for body in bodies:
                cred = body.get("cred")
                if not isinstance(cred, Mapping):
                    continue
                code, until = cred.get("code"), cred.get("code_until_ms")
                if isinstance(code, str) and isinstance(until, int) and len(code) == 32:
                    try:
                        yield bytes.fromhex(code), until / 1000
                    except ValueError:
                        continue
        return self.replay.seed(entries(), now)

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
        if not isinstance(text, str):
            return Rejection(Reason.MALFORMED_CODE, "not_text")
        try:
            if len(text) > MAX_SCANNED_TEXT:
                result: Credential | Rejection = Rejection(
                    Reason.MALFORMED_CODE, f"too_long: {len(text)} characters")
            else:
                result = self.schemes.verify(text.strip(), now=t, clock_quality=clock_quality)
        except Exception as err:  # a plugged-in scheme misbehaved: refuse, never crash
            log.exception("code scheme raised on %s", mask_code(text))
            return Rejection(Reason.MALFORMED_CODE, f"unexpected:{type(err).__name__}")
        if isinstance(result, Rejection):  # the journal records it; this is for debugging
            log.debug("code %s refused: %s (%s)", mask_code(text), result.reason.value,
                      result.detail)
        return result


def build_verifier(section: Any, pseudonymizer: Pseudonymizer, *,
                   clock: Callable[[], float] = time.time) -> CodeVerifier:
    """A :class:`CodeVerifier` from the agent config's ``codes`` section
    (:class:`agent.config.CodesSection`: ``trust_file``, ``window_back_s``,
    ``window_ahead_s`` and the online schemes of ``online``).

    Raises :class:`~agent.codes.trust.TrustStoreError` (a ``ValueError``) naming the trust
    file and key at fault.
    """
    trust = TrustStore.load(section.trust_file)
    verifier = CodeVerifier(trust, pseudonymizer=pseudonymizer,
                            window_back_s=float(section.window_back_s),
                            window_ahead_s=float(section.window_ahead_s), clock=clock)
    from agent.codes.online_config import online_schemes

    for scheme in online_schemes(getattr(section, "online", []), pseudonymizer):
        verifier.register(scheme)          # [[codes.online]]: prefix → online scheme
    return verifier
