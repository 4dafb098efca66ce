"""The YKT1 scheme: genuine codes accepted on every algorithm, each forgery or defect refused
with its own reason, trust files, runtime trust swaps, online schemes."""

from __future__ import annotations

import base64
import builtins
import json
import logging
import queue
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import cbor2
import pytest

from agent.codes import (
    CodeVerifier,
    OnlineScheme,
    TrustStore,
    TrustStoreError,
    b45decode,
    b45encode,
    sign_code,
)
from agent.codes import algorithms as algmod
from agent.codes.base45 import Base45Error
from agent.codes.trust import parse_trust_document, read_trust_file
from agent.model import Credential, Presentation, Reason, Rejection
from agent.pseudonym import Pseudonymizer, mask_code
from simulator.phone import Phone, SimIssuer
from tests.fixtures.qr import HAVE_SM2, QR_ALGS, QR_NOW, QR_PSEUDO

# -- Base45 (RFC 9285 §4.3 examples) ---------------------------------------------------------


@pytest.mark.parametrize("raw,text", [(b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"),
                                      (b"base-45", "UJCLQE7W581"), (b"ietf!", "QED8WEX0"),
                                      (b"", "")])
def test_base45_rfc_vectors(raw: bytes, text: str) -> None:
    assert b45encode(raw) == text
    assert b45decode(text) == raw


@pytest.mark.parametrize("bad", ["A", "GGW", "ZZ", "abc", "BB8A"])
def test_base45_rejects_invalid(bad: str) -> None:
    with pytest.raises(Base45Error):
        b45decode(bad)


# -- acceptance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", QR_ALGS)
def test_fresh_code_accepted(alg: str, qr_verifier: CodeVerifier,
                             qr_phone: Callable[..., Phone]) -> None:
    phone = qr_phone(alg)
    res = qr_verifier.verify(phone.new_code(QR_NOW - 5))
    assert isinstance(res, Credential), res
    assert res.kind == "qr:ykt1"
    assert res.holder_key == "ab" * 16
    assert res.categories == frozenset({"elderly"})
    assert res.authenticated_by == f"sig:{alg}"
    assert res.valid_until == date(2027, 1, 16)
    assert len(res.credential_key) == 32
    # stable per certificate: a later code of the same phone has the same credential key
    again = qr_verifier.verify(phone.new_code(QR_NOW))
    assert isinstance(again, Credential) and again.credential_key == res.credential_key


def test_claims_and_pseudonymous_credential_key(qr_trust: TrustStore,
                                                qr_phone: Callable[..., Phone]) -> None:
    pz = Pseudonymizer(b"k" * 16)
    hk = pz.holder_key("370102195002031234")
    phone = qr_phone("ES256", holder_key=hk, birth_date=date(1950, 2, 3),
                     categories=["elderly", "veteran_family"])
    v = CodeVerifier(qr_trust, pseudonymizer=pz, clock=lambda: QR_NOW)
    res = v.verify(phone.new_code(QR_NOW))
    assert isinstance(res, Credential)
    assert res.holder_key == hk  # the same key a card of this person yields
    assert res.birth_date == date(1950, 2, 3)
    assert res.categories == {"elderly", "veteran_family"}
    assert "370102" not in json.dumps(res.journal_fields())


def test_mixed_algorithms_issuer_sm2_or_eddsa_holder_es256(
        qr_issuers: dict[str, SimIssuer], qr_verifier: CodeVerifier) -> None:
    issuer = qr_issuers["EdDSA"]
    phone = Phone.enroll(issuer, holder_key="11" * 16, alg="ES256", now=QR_NOW)
    res = qr_verifier.verify(phone.new_code(QR_NOW))
    assert isinstance(res, Credential) and res.authenticated_by == "sig:EdDSA+ES256"


# -- refusals -----------------------------------------------------------------------------------


def _mutate_code(text: str, fn: Callable[[list[Any]], None]) -> str:
    msg = cbor2.loads(b45decode(text[5:]))
    arr = list(msg.value)
    fn(arr)
    return "YKT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(18, arr)))


def _refused(res: Credential | Rejection, reason: Reason, detail: str = "") -> None:
    assert isinstance(res, Rejection), res
    assert res.reason == reason, res
    assert res.detail.startswith(detail), res


@pytest.mark.parametrize("alg", QR_ALGS)
def test_forged_issuer_signature(alg: str, qr_issuers: dict[str, SimIssuer],
                                 qr_verifier: CodeVerifier) -> None:
    real = qr_issuers[alg]
    forger = SimIssuer(real.kid, alg, iss=real.iss)  # same kid, other key
    phone = Phone.enroll(forger, holder_key="ab" * 16, alg=alg, now=QR_NOW)
    _refused(qr_verifier.verify(phone.new_code(QR_NOW)), Reason.BAD_SIGNATURE,
             "issuer_signature")


@pytest.mark.parametrize("alg", QR_ALGS)
def test_forged_holder_signature(alg: str, qr_phone: Callable[..., Phone],
                                 qr_verifier: CodeVerifier) -> None:
    genuine = qr_phone(alg)
    thief = algmod.algorithm(alg)
    # a stolen certificate signed with another key
    text = sign_code(thief, thief.generate(), genuine.certificate, iat=int(QR_NOW))
    _refused(qr_verifier.verify(text), Reason.BAD_SIGNATURE, "holder_signature")
    # a genuine code with its payload changed
    good = genuine.new_code(QR_NOW)

    def bump(arr: list[Any]) -> None:
        arr[2] = cbor2.dumps({6: int(QR_NOW) + 1, 7: b"\x00" * 8})
    _refused(qr_verifier.verify(_mutate_code(good, bump)), Reason.BAD_SIGNATURE,
             "holder_signature")


def test_unknown_kid(qr_verifier: CodeVerifier) -> None:
    stranger = SimIssuer("not-trusted", "ES256")
    phone = Phone.enroll(stranger, holder_key="ab" * 16, now=QR_NOW)
    _refused(qr_verifier.verify(phone.new_code(QR_NOW)), Reason.UNKNOWN_ISSUER, "unknown_kid")


def test_expired_certificate(qr_phone: Callable[..., Phone], qr_verifier: CodeVerifier) -> None:
    phone = qr_phone("ES256", now=QR_NOW - 2 * 86400, valid_s=86400)
    res = qr_verifier.verify(phone.new_code(QR_NOW))
    _refused(res, Reason.CERT_EXPIRED, "cert_expired")
    assert isinstance(res, Rejection) and res.holder_key == "0f" * 16  # identified


def test_expired_code_and_screenshot(qr_phone: Callable[..., Phone],
                                     qr_verifier: CodeVerifier) -> None:
    phone = qr_phone()
    _refused(qr_verifier.verify(phone.new_code(QR_NOW - 61)), Reason.CODE_EXPIRED)
    # a screenshot accepted now, shown again two minutes later: expired, not replayed
    shot = phone.new_code(QR_NOW)
    assert isinstance(qr_verifier.verify(shot, now=QR_NOW), Credential)
    _refused(qr_verifier.verify(shot, now=QR_NOW + 120), Reason.CODE_EXPIRED)


def test_future_code(qr_phone: Callable[..., Phone], qr_verifier: CodeVerifier) -> None:
    _refused(qr_verifier.verify(qr_phone().new_code(QR_NOW + 31)), Reason.CODE_NOT_YET_VALID)
    assert isinstance(qr_verifier.verify(qr_phone().new_code(QR_NOW + 29)), Credential)


def test_replayed_code(qr_phone: Callable[..., Phone], qr_verifier: CodeVerifier) -> None:
    text = qr_phone().new_code(QR_NOW)
    assert isinstance(qr_verifier.verify(text), Credential)
    _refused(qr_verifier.verify(text, now=QR_NOW + 10), Reason.CODE_REPLAYED)
    # the same code read with an altered (malleable) signature is still the same code
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

    def flip_s(arr: list[Any]) -> None:
        sig = arr[3]
        s = int.from_bytes(sig[32:], "big")
        arr[3] = sig[:32] + (n - s).to_bytes(32, "big")
    flipped = _mutate_code(text, flip_s)
    _refused(qr_verifier.verify(flipped, now=QR_NOW + 11), Reason.CODE_REPLAYED)


def test_clock_quality_widens_window(qr_phone: Callable[..., Phone],
                                     qr_verifier: CodeVerifier) -> None:
    old = qr_phone().new_code(QR_NOW - 150)
    _refused(qr_verifier.verify(old, clock_quality="synced"), Reason.CODE_EXPIRED)
    assert isinstance(qr_verifier.verify(old, clock_quality="rtc"), Credential)


@pytest.mark.parametrize("text,reason,detail", [
    ("", Reason.UNSUPPORTED_CODE, "unknown_prefix"),
    ("https://example.com/?q=1", Reason.UNSUPPORTED_CODE, "unknown_prefix"),
    ("YKT2:ABCDEF", Reason.UNSUPPORTED_CODE, "unknown_prefix"),
    ("ykt1:" + "A" * 300, Reason.UNSUPPORTED_CODE, "unknown_prefix"),
    ("YKT1:" + "A" * 5000, Reason.MALFORMED_CODE, "too_long"),
    ("YKT1:" + "A" * 1300, Reason.MALFORMED_CODE, "too_long"),
    ("YKT1:ABC", Reason.MALFORMED_CODE, "too_short"),
    ("YKT1:" + "abc" * 40, Reason.MALFORMED_CODE, "bad_base45"),
    ("YKT1:" + "A" * 121, Reason.MALFORMED_CODE, "bad_base45"),
    ("YKT1:" + "ZZZ" * 40, Reason.MALFORMED_CODE, "bad_base45"),
])
def test_garbage_refused(text: str, reason: Reason, detail: str,
                         qr_verifier: CodeVerifier) -> None:
    _refused(qr_verifier.verify(text), reason, detail)


def test_truncated_code(qr_phone: Callable[..., Phone], qr_verifier: CodeVerifier) -> None:
    text = qr_phone().new_code(QR_NOW)
    for cut in (len(text) - 3, len(text) - 30, len(text) // 2):
        res = qr_verifier.verify(text[:cut])
        _refused(res, Reason.MALFORMED_CODE)
        assert isinstance(res, Rejection) and res.detail.split(":")[0] in (
            "bad_base45", "bad_cbor")


def test_bad_cbor_and_bad_cose(qr_verifier: CodeVerifier) -> None:
    _refused(qr_verifier.verify("YKT1:" + b45encode(b"\xff" * 80)), Reason.MALFORMED_CODE,
             "bad_cbor")
    _refused(qr_verifier.verify("YKT1:" + b45encode(cbor2.dumps([1, 2, 3]) + b"\x00" * 60)),
             Reason.MALFORMED_CODE, "bad_cbor")  # trailing bytes
    _refused(qr_verifier.verify("YKT1:" + b45encode(cbor2.dumps({"a": "b" * 60}))),
             Reason.MALFORMED_CODE, "bad_cose")


def test_sm2_code_without_tongsuopy(monkeypatch: pytest.MonkeyPatch,
                                    qr_verifier: CodeVerifier) -> None:
    cose = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: algmod.SM2_ALG_ID, 13: b"x"}), {},
                                          b"", b"s" * 64]))
    monkeypatch.setattr(algmod, "_instances", {})
    # neither tongsuopy nor an SM2-capable libcrypto (else SM2 verifies through it:
    # tests/test_sm2_libcrypto.py)
    from agent.codes import sm2_libcrypto

    monkeypatch.setattr(sm2_libcrypto, "available", lambda: False)
    real_import = builtins.__import__

    def no_tongsuo(name: str, *a: Any, **kw: Any) -> Any:
        if name.startswith("tongsuopy"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_tongsuo)
    _refused(qr_verifier.verify("YKT1:" + b45encode(cose)), Reason.UNSUPPORTED_CODE,
             "alg_unavailable")
    doc = {"issuers": [{"kid": "gm", "alg": "SM2", "public_key":
                        "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----"}]}
    with pytest.raises(TrustStoreError, match=r"issuers\[0\].alg.*tongsuopy.*\[sm2\]"):
        parse_trust_document(doc, source="trust.toml")


# -- trust files and runtime swaps ------------------------------------------------------------


def test_trust_file_json_and_toml(tmp_path: Any, qr_issuers: dict[str, SimIssuer]) -> None:
    es = qr_issuers["ES256"]
    (tmp_path / "t.json").write_text(json.dumps(
        {"version": "7", "issuers": [es.trust_entry(not_after="2030-01-01T00:00:00Z")]}))
    keys, version = read_trust_file(tmp_path / "t.json")
    assert version == "7" and keys[0].kid == es.kid and keys[0].not_after == 1893456000.0
    entry = es.trust_entry()
    (tmp_path / "t.toml").write_text(
        f'version = "8"\n[[issuers]]\nkid = "{entry["kid"]}"\nalg = "ES256"\n'
        f'public_key = """\n{entry["public_key"]}"""\n')
    store = TrustStore.load(tmp_path / "t.toml")
    assert store.version == "8" and len(store) == 1


@pytest.mark.parametrize("doc,where", [
    ({"issuers": [{"alg": "ES256", "public_key": "x"}]}, r"issuers\[0\].kid"),
    ({"issuers": [{"kid": "a", "public_key": "nope"}]}, r"issuers\[0\].public_key"),
    ({"issuers": [{"kid": "a", "alg": "RS256", "public_key":
                   "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----"}]}, r"\.alg"),
    ({"issuers": [{"kid": "a", "colour": "red"}]}, r"unknown key"),
    ({"isuers": []}, r"unknown key"),
])
def test_trust_file_errors_name_the_key(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(TrustStoreError, match=where):
        parse_trust_document(doc, source="trust.json")


def test_trust_wrong_key_type(qr_issuers: dict[str, SimIssuer]) -> None:
    entry = dict(qr_issuers["EdDSA"].trust_entry(), alg="ES256")
    with pytest.raises(TrustStoreError, match="P-256"):
        parse_trust_document({"issuers": [entry]})


def test_issuer_key_validity(qr_issuers: dict[str, SimIssuer],
                             qr_phone: Callable[..., Phone]) -> None:
    es = qr_issuers["ES256"]
    keys, _ = parse_trust_document({"issuers": [es.trust_entry(not_after="2020-01-01T00:00Z")]})
    v = CodeVerifier(TrustStore(keys), pseudonymizer=QR_PSEUDO, clock=lambda: QR_NOW)
    _refused(v.verify(qr_phone().new_code(QR_NOW)), Reason.UNKNOWN_ISSUER, "issuer_key_expired")


def test_trust_store_swap_at_runtime(qr_trust_doc: dict[str, Any],
                                     qr_phone: Callable[..., Phone]) -> None:
    keys, _ = parse_trust_document(qr_trust_doc)
    store = TrustStore(keys, version="1")
    v = CodeVerifier(store, pseudonymizer=QR_PSEUDO, clock=lambda: QR_NOW)
    assert isinstance(v.verify(qr_phone().new_code(QR_NOW - 1)), Credential)
    # policy update revokes the ES256 issuer: its (cached) certificate stops verifying
    store.replace([k for k in keys if k.alg != "ES256"], version="2")
    _refused(v.verify(qr_phone().new_code(QR_NOW)), Reason.UNKNOWN_ISSUER, "unknown_kid")
    store.replace(keys, version="3")
    assert isinstance(v.verify(qr_phone().new_code(QR_NOW - 2)), Credential)
    with pytest.raises(TrustStoreError):
        store.replace(keys + keys)
    assert store.version == "3"


def test_concurrent_verification_during_swaps(qr_trust_doc: dict[str, Any],
                                              qr_phone: Callable[..., Phone]) -> None:
    keys, _ = parse_trust_document(qr_trust_doc)
    store = TrustStore(keys)
    v = CodeVerifier(store, pseudonymizer=QR_PSEUDO, clock=lambda: QR_NOW)
    phone = qr_phone()
    codes = [phone.new_code(QR_NOW) for _ in range(200)]
    errors: list[object] = []

    def work(chunk: list[str]) -> None:
        for c in chunk:
            r = v.verify(c)
            if not isinstance(r, Credential):
                errors.append(r)
    ts = [threading.Thread(target=work, args=(codes[i::4],)) for i in range(4)]
    for t in ts:
        t.start()
    for _ in range(50):
        store.replace(keys)
    for t in ts:
        t.join()
    assert errors == []


# -- other schemes: online verification ------------------------------------------------------


class _Client:
    """An online verification service; with ``hang`` it answers nothing until that is set."""

    def __init__(self, fail: bool = False, hang: threading.Event | None = None) -> None:
        self.fail, self.hang, self.calls, self.answered = fail, hang, 0, 0

    def verify(self, text: str, timeout_s: float) -> Credential | Rejection:
        self.calls += 1
        if self.hang is not None:
            self.hang.wait(30)
        if self.fail:
            raise ConnectionError("platform down")
        self.answered += 1
        return Credential(kind="qr:essc", credential_key="c" * 32, holder_key="h" * 32,
                          authenticated_by="online:essc")


class _Monotonic:
    """A settable monotonic clock (seconds) for the back-off."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_online_scheme_dispatch_and_timeout(qr_verifier: CodeVerifier) -> None:
    """A hung service is answered ``timeout`` while it still hangs (the tap did not wait
    for it), then ``backoff`` without calling it, until the back-off has passed. How long
    each answer takes is measured by ``bench/bench_qr.py --online-only``."""
    online = [True]
    fast = OnlineScheme(["ESSC:"], _Client(), kind="qr:essc", is_online=lambda: online[0])
    hang = threading.Event()
    hung = _Client(hang=hang)
    mono = _Monotonic()
    slow = OnlineScheme(["CITY:"], hung, kind="qr:city", timeout_s=0.1, backoff_s=60,
                        monotonic=mono)
    qr_verifier.register(fast)
    qr_verifier.register(slow)
    try:
        res = qr_verifier.verify("ESSC:abc")
        assert isinstance(res, Credential) and res.kind == "qr:essc"
        online[0] = False
        _refused(qr_verifier.verify("ESSC:abc"), Reason.ONLINE_UNAVAILABLE, "offline_fallback:offline")
        _refused(qr_verifier.verify("CITY:1"), Reason.ONLINE_UNAVAILABLE, "offline_fallback:timeout")
        assert (hung.calls, hung.answered) == (1, 0)     # answered while the call still hangs
        # while backing off: no call at all
        _refused(qr_verifier.verify("CITY:2"), Reason.ONLINE_UNAVAILABLE, "offline_fallback:backoff")
        mono.t += 59
        _refused(qr_verifier.verify("CITY:3"), Reason.ONLINE_UNAVAILABLE, "offline_fallback:backoff")
        assert hung.calls == 1
        # back-off over: the service is asked again (still hung: a timeout again)
        mono.t += 2
        _refused(qr_verifier.verify("CITY:4"), Reason.ONLINE_UNAVAILABLE, "offline_fallback:timeout")
        assert (hung.calls, hung.answered) == (2, 0)
        with pytest.raises(ValueError):
            qr_verifier.register(OnlineScheme(["ESSC:"], _Client()))
    finally:
        hang.set()
        fast.close()
        slow.close()


def test_online_client_error_is_unavailable() -> None:
    s = OnlineScheme(["X:"], _Client(fail=True), kind="qr:x")
    try:
        _refused(s.verify("X:1", now=QR_NOW, clock_quality="synced"),
                 Reason.ONLINE_UNAVAILABLE, "offline_fallback:down")
    finally:
        s.close()


def _leaked(text: str, logs: str, shown: int) -> list[str]:
    """Slices of ``text`` longer than ``shown`` characters that appear in ``logs``."""
    n = shown + 1
    return [text[i:i + n] for i in range(len(text) - n + 1) if text[i:i + n] in logs]


def test_code_text_never_logged(tmp_path: Path, qr_phone: Callable[..., Phone],
                                qr_verifier: CodeVerifier,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Verifier, serial scanner and camera, all at DEBUG: no slice of a code text longer
    than its scheme prefix reaches the logs, and nothing of a non-code text (an ID-card
    barcode) at all."""
    from drivers.camera import CameraSource
    from drivers.scanner import SerialScannerSource
    from simulator.phone import render_frame, write_images

    caplog.set_level(logging.DEBUG)
    code = qr_phone().new_code(QR_NOW)
    id_text = "370102195002031234"  # a scanned ID-card barcode
    for text in (code, code, code[:200], id_text, "YKT1:" + "A" * 5000):
        assert isinstance(qr_verifier.verify(text), Credential | Rejection)

    scanner = SerialScannerSource("loop://", debounce_s=0.0)
    got: queue.Queue[Presentation] = queue.Queue()
    scanner.start(got.put)
    try:
        assert scanner.port_open.wait(5)
        scanner._port.write(f"{code}\r\n{id_text}\r\n".encode())
        assert [got.get(timeout=3).text for _ in range(2)] == [code, id_text]
    finally:
        scanner.stop()

    write_images([render_frame(code)], tmp_path / "imgs")
    camera = CameraSource(str(tmp_path / "imgs"), pace="all")
    camera.start(got.put)
    assert camera.wait_done(10)
    camera.stop()
    assert got.get(timeout=1).text == code

    logs = caplog.text
    assert "scanner:loop://: code YKT1:…(" in logs and "code …(18 chars)" in logs
    assert f"camera:{tmp_path / 'imgs'}: code YKT1:…(" in logs
    assert _leaked(code, logs, len("YKT1:")) == []
    assert _leaked(id_text, logs, 4) == []
    # refusals are journaled by the engine; the verifier only notes them at DEBUG
    assert not [r for r in caplog.records
                if r.name == "agent.codes.verifier" and r.levelno >= logging.INFO]


@pytest.mark.parametrize("text,masked", [
    ("YKT1:RRQHABSLK7", "YKT1:…(15 chars)"),
    ("https://example.com/?q=1", "https:…(24 chars)"),
    ("370102195002031234", "…(18 chars)"),
    ("3701:02195002031234", "…(19 chars)"),          # digits are no scheme
    ("AVERYLONGSCHEMENAME:x", "…(21 chars)"),        # longer than 12 characters
    ("张三:110101", "…(9 chars)"),
    ("", "…(0 chars)"),
])
def test_mask_code(text: str, masked: str) -> None:
    assert mask_code(text) == masked


def test_scanner_does_not_import_the_verifier() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import sys, drivers.scanner; print(sorted(m for m in "
         "sys.modules if m.startswith(('agent.codes', 'cryptography', 'cbor2', 'cv2'))))"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


# -- algorithms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", QR_ALGS)
def test_public_der_is_the_pem_body(alg: str) -> None:
    a = algmod.algorithm(alg)
    pub = a.public_key(a.generate())
    der = a.public_der(pub)
    pem = a.public_pem(pub).decode()
    assert der == base64.b64decode("".join(pem.strip().splitlines()[1:-1]))
    assert der[0] == 0x30  # a DER SEQUENCE (SubjectPublicKeyInfo)
    assert a.cose_key(a.load_public_pem(pem.encode())) == a.cose_key(pub)


@pytest.mark.parametrize("alg,other", [("ES256", "EdDSA"), ("EdDSA", "ES256")])
def test_pem_loaders_check_the_key_type(alg: str, other: str) -> None:
    a, b = algmod.algorithm(alg), algmod.algorithm(other)
    key = b.generate()
    with pytest.raises(algmod.KeyFormatError, match=f"{alg} needs .* private key"):
        a.load_private_pem(b.private_pem(key))
    with pytest.raises(algmod.KeyFormatError, match=f"{alg} needs .* public key"):
        a.load_public_pem(b.public_pem(b.public_key(key)))
    with pytest.raises(algmod.KeyFormatError, match="not a PEM"):
        a.load_public_pem(b"-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n")


@pytest.mark.skipif(not HAVE_SM2, reason="tongsuopy (extra 'sm2') is not installed")
def test_sm2_private_pem_must_be_on_the_sm2_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    sm2 = algmod.algorithm("SM2")
    es = algmod.algorithm("ES256")
    key = sm2.generate()
    assert sm2.public_der(sm2.public_key(sm2.load_private_pem(sm2.private_pem(key))))
    # tongsuopy itself refuses other curves today; the check must not depend on that
    with pytest.raises(algmod.KeyFormatError):
        sm2.load_private_pem(es.private_pem(es.generate()))
    foreign = es.generate()
    monkeypatch.setattr(sm2._ser, "load_pem_private_key", lambda pem, password: foreign)
    with pytest.raises(algmod.KeyFormatError, match="SM2 curve"):
        sm2.load_private_pem(b"any")


# -- test vectors in docs/qr.md -----------------------------------------------------------------

_DOC = Path(__file__).parents[1] / "docs" / "qr.md"


def _doc_block(name: str) -> str:
    text = _DOC.read_text(encoding="utf-8")
    after = text.split(f"<!-- vector:{name} -->", 1)[1]
    return after.split("```", 2)[1].strip()


def _vector_kw() -> dict[str, Any]:
    return {"holder_key": "00112233445566778899aabbccddeeff", "iss": "370100",
            "categories": ["elderly"], "birth_date": date(1950, 2, 3),
            "iat": 1_800_000_000 - 3600, "valid_s": 86400, "cti": bytes.fromhex("0102030405060708")}


@pytest.mark.parametrize("name", ["eddsa", "es256"])
def test_doc_vectors_verify(name: str) -> None:
    alg = "EdDSA" if name == "eddsa" else "ES256"
    keys, _ = parse_trust_document({"issuers": [
        {"kid": f"vec-{name}", "alg": alg, "iss": "370100", "public_key": _doc_block(f"{name}:key")}]})
    v = CodeVerifier(TrustStore(keys), pseudonymizer=QR_PSEUDO)
    later = CodeVerifier(TrustStore(keys), pseudonymizer=QR_PSEUDO)
    text = _doc_block(f"{name}:code")
    res = v.verify(text, now=QR_NOW)
    assert isinstance(res, Credential), res
    assert res.holder_key == "00112233445566778899aabbccddeeff"
    assert res.birth_date == date(1950, 2, 3) and res.valid_until == date(2027, 1, 16)
    _refused(v.verify(text, now=QR_NOW), Reason.CODE_REPLAYED)
    _refused(later.verify(text, now=QR_NOW + 61), Reason.CODE_EXPIRED)


def test_doc_eddsa_vector_rebuilds_exactly() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from agent.codes import issue_certificate

    a = algmod.algorithm("EdDSA")
    ik = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    hk = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    cert = issue_certificate(a, ik, "vec-eddsa", a, a.public_key(hk), **_vector_kw())
    text = sign_code(a, hk, cert, iat=1_800_000_000, nonce=bytes.fromhex("a0a1a2a3a4a5a6a7"))
    assert text == _doc_block("eddsa:code")


def test_build_verifier_from_config_section(tmp_path: Any, qr_trust_doc: dict[str, Any],
                                            qr_phone: Callable[..., Phone]) -> None:
    from types import SimpleNamespace

    from agent.codes import build_verifier

    (tmp_path / "trust.json").write_text(json.dumps(qr_trust_doc))
    section = SimpleNamespace(trust_file=tmp_path / "trust.json", window_back_s=10,
                              window_ahead_s=5)
    v = build_verifier(section, Pseudonymizer(b"p" * 16), clock=lambda: QR_NOW)
    assert isinstance(v.verify(qr_phone().new_code(QR_NOW - 5)), Credential)
    _refused(v.verify(qr_phone().new_code(QR_NOW - 15)), Reason.CODE_EXPIRED)
    section.trust_file = tmp_path / "missing.toml"
    with pytest.raises(TrustStoreError, match="missing.toml"):
        build_verifier(section, QR_PSEUDO)
