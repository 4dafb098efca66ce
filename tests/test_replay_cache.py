"""The replay cache's hard cap, through the verifier: a code accepted once is refused as
``code_replayed`` for as long as its window lasts, even after the full cache dropped its
entry (docs/qr.md, agent/codes/replay.py)."""

from __future__ import annotations

from collections.abc import Callable

from agent.codes import CodeVerifier, TrustStore
from agent.model import Credential, Reason, Rejection
from simulator.phone import Phone
from tests.fixtures.qr import QR_NOW, QR_PSEUDO

WIDEST_WINDOW_S = 60.0 + 600.0
"""The verifier's default backward window plus the widest clock allowance (``unsynced``):
the replay cache holds a code issued at ``iat`` until iat + 660 s, whatever the clock
quality when it was accepted."""


def _verifier(trust: TrustStore, cap: int) -> CodeVerifier:
    return CodeVerifier(trust, pseudonymizer=QR_PSEUDO, clock=lambda: QR_NOW,
                        replay_max_entries=cap)


def _accepted(v: CodeVerifier, text: str, now: float) -> None:
    res = v.verify(text, now=now)
    assert isinstance(res, Credential), res


def _replayed(v: CodeVerifier, text: str, now: float) -> Rejection:
    res = v.verify(text, now=now)
    assert isinstance(res, Rejection) and res.reason is Reason.CODE_REPLAYED, res
    return res


def test_a_replay_inside_the_window_is_refused_while_the_cache_has_room(
        qr_phone: Callable[..., Phone], qr_trust: TrustStore) -> None:
    v = _verifier(qr_trust, cap=3)
    codes = [qr_phone().new_code(QR_NOW - 30 + i) for i in range(3)]
    for c in codes:
        _accepted(v, c, QR_NOW)
    assert len(v.replay) == 3
    for c in codes:
        assert _replayed(v, c, QR_NOW + 5).detail == "code_replayed"


def test_the_full_cache_never_accepts_a_dropped_code_twice(
        qr_phone: Callable[..., Phone], qr_trust: TrustStore) -> None:
    """Cap 3, four codes within one window: the soonest-expiring entry is dropped, and
    that code shown again inside its window is still refused as a replay."""
    v = _verifier(qr_trust, cap=3)
    phone = qr_phone()
    oldest, a, b, newest = (phone.new_code(QR_NOW - 40 + 10 * i) for i in range(4))
    for c in (oldest, a, b, newest):
        _accepted(v, c, QR_NOW)
    assert len(v.replay) == 3                         # capped: one entry dropped
    for c in (oldest, a, b, newest):                  # all four inside their window
        _replayed(v, c, QR_NOW + 1)
    assert len(v.replay) == 3


def test_after_the_cap_fresh_codes_are_accepted_and_held(
        qr_phone: Callable[..., Phone], qr_trust: TrustStore) -> None:
    """Codes expiring later than the dropped one keep being accepted once and refused
    after; the cost of the cap is borne by older codes, never by a replay."""
    v = _verifier(qr_trust, cap=2)
    phone = qr_phone()
    first, second, third = (phone.new_code(QR_NOW - 20 + 10 * i) for i in range(3))
    for c in (first, second, third):
        _accepted(v, c, QR_NOW)                   # first dropped (expires QR_NOW + 40)
    refused = _replayed(v, first, QR_NOW + 2)
    assert refused.detail in ("code_replayed", "replay_cache_full")
    late = phone.new_code(QR_NOW + 5)             # expires after everything dropped
    _accepted(v, late, QR_NOW + 5)
    _replayed(v, late, QR_NOW + 6)
    # a never-seen code issued before the dropped one is indistinguishable from it while
    # the dropped entry's window lasts: refused, not accepted on trust
    older = phone.new_code(QR_NOW - 25)
    assert _replayed(v, older, QR_NOW + 6).detail == "replay_cache_full"


def test_expired_entries_leave_room_before_the_cap_drops_anything(
        qr_phone: Callable[..., Phone], qr_trust: TrustStore) -> None:
    """Entries leave the cache once their code is past its widest window, so a cache that
    only ever holds one window's codes never reaches the cap nor refuses a fresh code."""
    v = _verifier(qr_trust, cap=2)
    phone = qr_phone()
    t = QR_NOW
    for _ in range(10):                           # 20 codes, 2 per widest window
        for k in range(2):
            _accepted(v, phone.new_code(t + k), t + k)
        t += WIDEST_WINDOW_S + 5
    assert v.replay.dropped == 0
    assert len(v.replay) == 2


def test_a_replay_is_refused_after_the_clock_quality_widened_the_window(
        qr_phone: Callable[..., Phone], qr_trust: TrustStore) -> None:
    """docs/decisions.md 12: a worse clock widens the window, and the replay cache still
    refuses an exact replay. A code accepted while the clock was synchronised (window
    60 s) and shown again 100 s later, once the terminal runs on its RTC (window
    60 + 120 s), is still inside its window: it must be refused, not accepted again."""
    v = _verifier(qr_trust, cap=1000)
    code = qr_phone().new_code(QR_NOW)
    assert isinstance(v.verify(code, now=QR_NOW, clock_quality="synced"), Credential)
    res = v.verify(code, now=QR_NOW + 100, clock_quality="rtc")
    assert isinstance(res, Rejection) and res.reason is Reason.CODE_REPLAYED, res
    res = v.verify(code, now=QR_NOW + 600, clock_quality="unsynced")
    assert isinstance(res, Rejection) and res.reason is Reason.CODE_REPLAYED, res
    later = v.verify(code, now=QR_NOW + 700, clock_quality="unsynced")   # past every window
    assert isinstance(later, Rejection) and later.reason is Reason.CODE_EXPIRED, later
