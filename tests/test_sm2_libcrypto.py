"""SM2 verification through the system's libcrypto (for machines without tongsuopy, such
as a Raspberry Pi): it agrees with tongsuopy's signatures, refuses altered ones, and
carries a signed dynamic code through the real verifier with tongsuopy hidden."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from agent.codes import algorithms as algs
from agent.codes import sm2_libcrypto
from agent.codes.algorithms import AlgorithmUnavailable, algorithm, sm2_backend

pytest.importorskip("tongsuopy", reason="tongsuopy signs the reference signatures")


@pytest.fixture
def without_tongsuopy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As on aarch64: importing tongsuopy fails; the algorithm registry starts afresh."""
    saved = dict(algs._instances)
    algs._instances.clear()
    for name in [m for m in sys.modules if m == "tongsuopy" or m.startswith("tongsuopy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tongsuopy", None)   # import tongsuopy -> ImportError
    yield
    algs._instances.clear()
    algs._instances.update(saved)


def test_libcrypto_verifies_what_tongsuopy_signs(without_tongsuopy: None) -> None:
    assert sm2_libcrypto.available(), "Debian 12's OpenSSL 3.0 has SM2"
    verifier = algorithm("SM2")
    assert sm2_backend() == "libcrypto"
    algs._instances.clear()
    sys.modules.pop("tongsuopy", None)                     # tongsuopy back, to sign
    signer = algs.SM2SM3()
    key = signer.generate()
    data = b"YKT1 code to be signed"
    sig = signer.sign(key, data)
    pub = verifier.from_cose_key(signer.cose_key(signer.public_key(key)))
    assert verifier.verify(pub, sig, data)
    assert not verifier.verify(pub, sig, data + b"!")
    assert not verifier.verify(pub, sig[:-1] + bytes([sig[-1] ^ 1]), data)
    other = verifier.from_cose_key(signer.cose_key(signer.public_key(signer.generate())))
    assert not verifier.verify(other, sig, data)
    assert verifier.load_public_pem(signer.public_pem(signer.public_key(key))).der == pub.der
    with pytest.raises(AlgorithmUnavailable, match="signing needs"):
        verifier.sign(key, data)


def test_a_sm2_code_is_accepted_with_tongsuopy_gone(qr_issuers: dict[str, object],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.codes import CodeVerifier, TrustStore
    from agent.codes.trust import parse_trust_document
    from simulator.phone import Phone
    from tests.fixtures.qr import QR_NOW, QR_PSEUDO

    if "SM2" not in qr_issuers:
        pytest.skip("no SM2 issuer")
    issuer = qr_issuers["SM2"]
    phone = Phone.enroll(issuer, alg="SM2", holder_key="ab" * 16,  # type: ignore[arg-type]
                         now=QR_NOW - 3600)
    code = phone.new_code(now=QR_NOW)
    doc = {"version": "t", "issuers": [issuer.trust_entry()]}  # type: ignore[attr-defined]
    saved = dict(algs._instances)
    algs._instances.clear()
    for name in [m for m in sys.modules if m == "tongsuopy" or m.startswith("tongsuopy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tongsuopy", None)
    try:
        keys, version = parse_trust_document(doc)
        verifier = CodeVerifier(TrustStore(keys, version=version), pseudonymizer=QR_PSEUDO,
                                clock=lambda: QR_NOW)
        cred = verifier.verify(code, now=QR_NOW)
        assert getattr(cred, "kind", None) == "qr:ykt1", cred
        assert sm2_backend() == "libcrypto"
    finally:
        algs._instances.clear()
        algs._instances.update(saved)
