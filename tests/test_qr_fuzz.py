"""Hypothesis fuzzing: the verifier never raises, whatever text it is handed."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.codes import CodeVerifier, TrustStore, b45decode, b45encode
from agent.codes.base45 import ALPHABET
from agent.model import Credential, Reason, Rejection
from simulator.phone import Phone
from tests.fixtures.fuzz import fuzz_examples
from tests.fixtures.qr import QR_NOW, QR_PSEUDO

_EXAMPLES = fuzz_examples()   # `make fuzz` runs this file too
_SETTINGS = settings(max_examples=_EXAMPLES,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=80)
    | st.text(max_size=20) | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.integers(-70000, 20) | st.text(max_size=4), inner, max_size=5),
    max_leaves=20)


def _check(res: object) -> None:
    assert isinstance(res, Credential | Rejection)
    if isinstance(res, Rejection):
        assert res.reason in (Reason.MALFORMED_CODE, Reason.UNSUPPORTED_CODE,
                              Reason.BAD_SIGNATURE, Reason.UNKNOWN_ISSUER, Reason.CERT_EXPIRED,
                              Reason.CODE_EXPIRED, Reason.CODE_NOT_YET_VALID,
                              Reason.CODE_REPLAYED)
        assert not res.detail.startswith("unexpected"), res


@_SETTINGS
@given(st.text(max_size=2000))
def test_any_text(qr_verifier: CodeVerifier, text: str) -> None:
    _check(qr_verifier.verify(text))


@_SETTINGS
@given(st.text(alphabet=ALPHABET, min_size=60, max_size=1200))
def test_prefixed_base45_alphabet(qr_verifier: CodeVerifier, body: str) -> None:
    _check(qr_verifier.verify("YKT1:" + body))


@_SETTINGS
@given(cbor_values)
def test_arbitrary_cbor(qr_verifier: CodeVerifier, value: object) -> None:
    try:
        raw = cbor2.dumps(value)
    except Exception:
        return
    _check(qr_verifier.verify("YKT1:" + b45encode(raw + b"\x00" * 40)))
    _check(qr_verifier.verify("YKT1:" + b45encode(raw)))


@_SETTINGS
@given(p=cbor_values, u=cbor_values, payload=cbor_values, sig=st.binary(max_size=80),
       tagged=st.booleans())
def test_cose_shaped(qr_verifier: CodeVerifier, p: object, u: object, payload: object,
                     sig: bytes, tagged: bool) -> None:
    try:
        prot = cbor2.dumps(p)
        pay = cbor2.dumps(payload)
        arr = [prot, u if isinstance(u, dict) else {}, pay, sig]
        raw = cbor2.dumps(cbor2.CBORTag(18, arr) if tagged else arr)
    except Exception:
        return
    _check(qr_verifier.verify("YKT1:" + b45encode(raw)))


def test_mutated_genuine_codes(qr_trust: TrustStore, qr_phone: Callable[..., Phone]) -> None:
    """Flip, drop and insert bytes of real codes: never raise, never accept a changed one."""
    v = CodeVerifier(qr_trust, pseudonymizer=QR_PSEUDO, clock=lambda: QR_NOW)
    phone = qr_phone("ES256")

    @settings(max_examples=_EXAMPLES)
    @given(pos=st.integers(0, 10_000), op=st.sampled_from(["flip", "drop", "insert"]),
           byte=st.integers(1, 255))
    def run(pos: int, op: str, byte: int) -> None:
        raw = bytearray(b45decode(phone.new_code(QR_NOW)[5:]))
        i = pos % len(raw)
        if op == "flip":
            raw[i] ^= byte
        elif op == "drop":
            del raw[i]
        else:
            raw.insert(i, byte)
        res = v.verify("YKT1:" + b45encode(bytes(raw)))
        _check(res)
        # everything is signed; only the optional COSE tag (byte 0, 0xD2) may be dropped
        if not (op == "drop" and i == 0):
            assert isinstance(res, Rejection), (op, i)

    run()
