"""The ``YKT1:`` dynamic code: a holder certificate (CWT) inside a holder-signed COSE_Sign1.

Two levels, as transit ride codes do (full description and test vectors in ``docs/qr.md``):

* the **holder certificate** is a COSE_Sign1 by an issuer key (protected header ``alg``,
  ``kid``) over CWT claims: ``iss`` (1), ``exp`` (4), ``iat`` (6), ``cti`` (7, certificate
  id), ``cnf`` (8, ``{1: COSE_Key}`` — the holder's public key) and the private claims
  ``"hk"`` (holder key, 16 bytes), ``"cat"`` (categories), ``"bd"`` (birth date
  ``YYYY-MM-DD``), ``"rg"`` (issuing region);
* the **code** is a COSE_Sign1 by the holder's key, protected header ``{1: alg, 13: cert}``
  (13 = ``kcwt``), payload ``{6: iat, 7: nonce}``; its text is ``YKT1:`` + Base45(CBOR).

This module mints both (ops side, phone simulator) and verifies codes
(:class:`Ykt1Scheme`), returning a :class:`~agent.model.Credential` or a
:class:`~agent.model.Rejection` whose ``detail`` starts with a stable token listed in
``docs/qr.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import cbor2

from agent.codes.algorithms import (
    AlgorithmUnavailable,
    KeyFormatError,
    SignatureAlgorithm,
    algorithm_by_cose_id,
)
from agent.codes.base45 import Base45Error, b45decode, b45encode
from agent.codes.cose import (
    HDR_ALG,
    HDR_KCWT,
    HDR_KID,
    CoseError,
    Sign1,
    decode_sign1,
    encode_sign1,
    loads_strict,
)
from agent.codes.replay import ReplayCache, ReplayVerdict
from agent.codes.trust import IssuerKey, TrustSnapshot, TrustStore
from agent.model import Credential, Reason, Rejection
from agent.pseudonym import Pseudonymizer

__all__ = [
    "KIND",
    "MAX_TEXT",
    "PREFIX",
    "HolderCertificate",
    "Ykt1Scheme",
    "issue_certificate",
    "sign_code",
]

log = logging.getLogger(__name__)

PREFIX = "YKT1:"
KIND = "qr:ykt1"
MAX_TEXT = 1200
"""Longest code text accepted (a version-25 QR at level M holds about 1,000 characters)."""
MIN_TEXT = len(PREFIX) + 60

# CWT claim keys (RFC 8392) and our private claims
C_ISS, C_EXP, C_IAT, C_CTI, C_CNF = 1, 4, 6, 7, 8
C_HK, C_CAT, C_BD, C_RG = "hk", "cat", "bd", "rg"
CNF_COSE_KEY = 1
NONCE_BYTES = 8

DEFAULT_ALLOWANCE = {"synced": 0.0, "rtc": 120.0, "unsynced": 600.0}
"""Extra clock skew (seconds) tolerated on each side per terminal clock quality."""


# -- minting ------------------------------------------------------------------------------
def issue_certificate(
    alg: SignatureAlgorithm,
    issuer_key: Any,
    kid: str,
    holder_alg: SignatureAlgorithm,
    holder_public_key: Any,
    *,
    holder_key: str,
    iss: str = "",
    categories: Sequence[str] = (),
    birth_date: date | None = None,
    region: str = "",
    iat: int | None = None,
    valid_s: int = 86400,
    cti: bytes | None = None,
) -> bytes:
    """An encoded holder certificate (COSE_Sign1) signed with ``issuer_key``.

    ``holder_key`` is the 32-hex-character holder key from
    :meth:`agent.pseudonym.Pseudonymizer.holder_key`; ``valid_s`` the lifetime in seconds.
    """
    hk = bytes.fromhex(holder_key)
    if len(hk) != 16:
        raise ValueError("holder_key must be 32 hex characters")
    now = int(time.time()) if iat is None else int(iat)
    claims: dict[Any, Any] = {
        C_ISS: iss, C_IAT: now, C_EXP: now + int(valid_s),
        C_CTI: cti if cti is not None else os.urandom(8),
        C_CNF: {CNF_COSE_KEY: holder_alg.cose_key(holder_public_key)},
        C_HK: hk,
    }
    if categories:
        claims[C_CAT] = list(categories)
    if birth_date is not None:
        claims[C_BD] = birth_date.isoformat()
    if region:
        claims[C_RG] = region
    return encode_sign1(alg, issuer_key, {HDR_KID: kid.encode()}, cbor2.dumps(claims),
                        tagged=False)


def sign_code(holder_alg: SignatureAlgorithm, holder_private_key: Any, certificate: bytes,
              *, iat: int | None = None, nonce: bytes | None = None) -> str:
    """A code text ``YKT1:…`` signed by the holder at ``iat`` (epoch s, default now)."""
    payload = cbor2.dumps({C_IAT: int(time.time()) if iat is None else int(iat),
                           C_CTI: nonce if nonce is not None else os.urandom(NONCE_BYTES)})
    msg = encode_sign1(holder_alg, holder_private_key, {HDR_KCWT: certificate}, payload)
    return PREFIX + b45encode(msg)


# -- verification -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HolderCertificate:
    """A holder certificate whose issuer signature has been verified."""

    kid: str
    issuer_alg: str
    iss: str
    iat: int
    exp: int
    cti: bytes
    holder_alg: SignatureAlgorithm
    holder_public_key: Any
    holder_key: str
    categories: frozenset[str]
    birth_date: date | None
    region: str
    credential_key: str


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str, cert: HolderCertificate | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.cert = reason, detail, cert


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62


def _trusted_issuer(snap: TrustSnapshot, kid: bytes, now: float, allowance: float
                    ) -> IssuerKey:
    """The issuer key ``kid`` of ``snap`` if it is valid at ``now``; else refused."""
    issuer = snap.get(kid)
    if issuer is None:
        raise _Refused(Reason.UNKNOWN_ISSUER, "unknown_kid")
    problem = issuer.problem_at(now, allowance)
    if problem:
        raise _Refused(Reason.UNKNOWN_ISSUER, problem)
    return issuer


class Ykt1Scheme:
    """Verifier of ``YKT1:`` codes (a :class:`~agent.codes.scheme.CodeScheme`).

    ``window_back_s``/``window_ahead_s``: how old/how far in the future a code's ``iat``
    may be (seconds); ``allowance_s`` widens both per clock quality. ``pseudonymizer``
    (the deployment key) keys the credential key, so the hub computes the same one.
    Texts given to :meth:`verify` start with :data:`PREFIX` (the registry dispatches by it).
    """

    kind: str = KIND
    prefixes: tuple[str, ...] = (PREFIX,)

    def __init__(
        self,
        trust: TrustStore,
        *,
        pseudonymizer: Pseudonymizer,
        window_back_s: float = 60.0,
        window_ahead_s: float = 30.0,
        allowance_s: Mapping[str, float] | None = None,
        replay: ReplayCache | None = None,
        cert_cache_size: int = 4096,
    ) -> None:
        self.trust = trust
        self.window_back_s = float(window_back_s)
        self.window_ahead_s = float(window_ahead_s)
        self.allowance_s = dict(DEFAULT_ALLOWANCE if allowance_s is None else allowance_s)
        self._pseudo = pseudonymizer
        self.replay = replay if replay is not None else ReplayCache()
        self._certs: OrderedDict[tuple[int, bytes], HolderCertificate] = OrderedDict()
        self._cert_cache_size = cert_cache_size
        self._lock = threading.Lock()

    def verify(self, text: str, *, now: float, clock_quality: str = "synced"
               ) -> Credential | Rejection:
        """Verify one ``YKT1:`` code text at wall time ``now`` (epoch s). Never raises."""
        try:
            return self._verify(text, now, clock_quality)
        except _Refused as r:
            c = r.cert
            return Rejection(r.reason, r.detail, kind=KIND,
                             credential_key=c.credential_key if c else "",
                             holder_key=c.holder_key if c else "")
        except Exception as err:  # defensive: bad input must never crash the agent
            log.warning("unexpected %s verifying a %s code", type(err).__name__, KIND,
                        exc_info=True)
            return Rejection(Reason.MALFORMED_CODE, f"unexpected:{type(err).__name__}", kind=KIND)

    def _verify(self, text: str, now: float, clock_quality: str) -> Credential:
        if len(text) > MAX_TEXT:
            raise _Refused(Reason.MALFORMED_CODE, f"too_long: {len(text)} characters")
        if len(text) < MIN_TEXT:
            raise _Refused(Reason.MALFORMED_CODE, f"too_short: {len(text)} characters")
        allowance = self.allowance_s.get(clock_quality, max(self.allowance_s.values(), default=0))
        try:
            raw = b45decode(text[len(PREFIX):])
        except Base45Error as err:
            raise _Refused(Reason.MALFORMED_CODE, f"bad_base45: {err}") from None
        try:
            code = decode_sign1(raw)
        except CoseError as err:
            raise _Refused(Reason.MALFORMED_CODE, f"{err.code}: {err}") from None
        try:
            code_alg = algorithm_by_cose_id(code.protected.get(HDR_ALG))
        except AlgorithmUnavailable:
            raise _Refused(Reason.UNSUPPORTED_CODE, "alg_unavailable: SM2 needs tongsuopy") \
                from None
        if code_alg is None:
            raise _Refused(Reason.UNSUPPORTED_CODE, "unknown_alg")
        cert_raw = code.protected.get(HDR_KCWT)
        if not isinstance(cert_raw, bytes):
            raise _Refused(Reason.MALFORMED_CODE, "no_certificate")

        cert = self._certificate(cert_raw, now, allowance)
        if now - allowance > cert.exp:
            raise _Refused(Reason.CERT_EXPIRED, "cert_expired", cert)
        if cert.iat > now + self.window_ahead_s + allowance:
            raise _Refused(Reason.CODE_NOT_YET_VALID, "cert_not_yet_valid", cert)
        if cert.holder_alg.cose_id != code_alg.cose_id:
            raise _Refused(Reason.BAD_SIGNATURE, "holder_alg_mismatch", cert)
        if not code_alg.verify(cert.holder_public_key, code.signature, code.to_be_signed()):
            raise _Refused(Reason.BAD_SIGNATURE, "holder_signature", cert)

        try:
            claims = loads_strict(code.payload)
        except CoseError:
            claims = None
        iat, nonce = (claims.get(C_IAT), claims.get(C_CTI)) if isinstance(claims, Mapping) else (
            None, None)
        if not _int(iat) or not isinstance(nonce, bytes) or not 4 <= len(nonce) <= 32:
            raise _Refused(Reason.MALFORMED_CODE, "bad_code_claims", cert)
        assert isinstance(iat, int)
        if iat < now - self.window_back_s - allowance:
            raise _Refused(Reason.CODE_EXPIRED, f"code_expired: {now - iat:.0f} s old", cert)
        if iat > now + self.window_ahead_s + allowance:
            raise _Refused(Reason.CODE_NOT_YET_VALID,
                           f"code_not_yet_valid: {iat - now:.0f} s ahead", cert)
        if iat > cert.exp:
            raise _Refused(Reason.CERT_EXPIRED, "code_after_cert_expiry", cert)
        code_id = hashlib.sha256(cert.kid.encode() + b"|" + cert.cti + b"|" + nonce
                                 + iat.to_bytes(8, "big", signed=True)).digest()[:16]
        # kept for the widest window any clock quality gives: a clock that falls back from
        # synced to RTC widens the window, and the code must still be known as seen
        widest = max(self.allowance_s.values(), default=0.0)
        until = iat + self.window_back_s + max(allowance, widest)
        seen = self.replay.record(code_id, until, now)
        if seen is not ReplayVerdict.NEW:
            raise _Refused(Reason.CODE_REPLAYED, seen.value, cert)
        auth = cert.holder_alg.name if cert.issuer_alg == cert.holder_alg.name else (
            f"{cert.issuer_alg}+{cert.holder_alg.name}")
        return Credential(
            kind=KIND, credential_key=cert.credential_key, holder_key=cert.holder_key,
            region=cert.region, generation="1",
            valid_from=datetime.fromtimestamp(cert.iat, UTC).date(),
            valid_until=datetime.fromtimestamp(cert.exp, UTC).date(),
            birth_date=cert.birth_date, categories=cert.categories,
            authenticated_by=f"sig:{auth}",
            replay_id=code_id.hex(), replay_until_ms=int(until * 1000),
        )

    def _certificate(self, cert_raw: bytes, now: float, allowance: float) -> HolderCertificate:
        """The verified certificate (cached by content and trust generation)."""
        snap = self.trust.snapshot()
        ck = (snap.generation, hashlib.sha256(cert_raw).digest())
        with self._lock:
            cached = self._certs.get(ck)
            if cached is not None:
                self._certs.move_to_end(ck)
        if cached is not None:
            _trusted_issuer(snap, cached.kid.encode(), now, allowance)
            return cached
        cert = self._verify_certificate(cert_raw, snap, now, allowance)
        with self._lock:
            self._certs[ck] = cert
            while len(self._certs) > self._cert_cache_size:
                self._certs.popitem(last=False)
        return cert

    def _verify_certificate(self, cert_raw: bytes, snap: TrustSnapshot, now: float,
                            allowance: float) -> HolderCertificate:
        try:
            msg: Sign1 = decode_sign1(cert_raw)
        except CoseError as err:
            raise _Refused(Reason.MALFORMED_CODE, f"bad_certificate: {err.code}") from None
        kid = msg.protected.get(HDR_KID)
        if not isinstance(kid, bytes):
            raise _Refused(Reason.MALFORMED_CODE, "bad_certificate: no kid")
        issuer = _trusted_issuer(snap, kid, now, allowance)
        try:
            alg = algorithm_by_cose_id(msg.protected.get(HDR_ALG))
        except AlgorithmUnavailable:
            alg = None
        if alg is None or alg.name != issuer.alg:
            raise _Refused(Reason.BAD_SIGNATURE, "issuer_alg_mismatch")
        if not alg.verify(issuer.public_key, msg.signature, msg.to_be_signed()):
            raise _Refused(Reason.BAD_SIGNATURE, "issuer_signature")
        try:
            c = loads_strict(msg.payload)
        except CoseError:
            c = None
        if not isinstance(c, Mapping):
            raise _Refused(Reason.MALFORMED_CODE, "bad_cert_claims: not a map")
        return self._parse_claims(c, issuer.kid, issuer.alg, issuer.iss)

    def _parse_claims(self, c: Mapping[Any, Any], kid: str, issuer_alg: str, want_iss: str
                      ) -> HolderCertificate:
        def bad(what: str) -> _Refused:
            return _Refused(Reason.MALFORMED_CODE, f"bad_cert_claims: {what}")

        iss, iat, exp, cti, hk = (c.get(C_ISS, ""), c.get(C_IAT), c.get(C_EXP), c.get(C_CTI),
                                  c.get(C_HK))
        if not isinstance(iss, str):
            raise bad("iss")
        if want_iss and iss != want_iss:
            raise _Refused(Reason.UNKNOWN_ISSUER, "iss_mismatch")
        if not (_int(iat) and _int(exp)):
            raise bad("iat/exp")
        if not isinstance(cti, bytes) or not 1 <= len(cti) <= 32:
            raise bad("cti")
        if not isinstance(hk, bytes) or len(hk) != 16:
            raise bad("hk")
        cnf = c.get(C_CNF)
        cose_key = cnf.get(CNF_COSE_KEY) if isinstance(cnf, Mapping) else None
        if not isinstance(cose_key, Mapping):
            raise bad("cnf")
        try:
            holder_alg = algorithm_by_cose_id(cose_key.get(3))
        except AlgorithmUnavailable:
            raise _Refused(Reason.UNSUPPORTED_CODE, "alg_unavailable: SM2 needs tongsuopy") \
                from None
        if holder_alg is None:
            raise _Refused(Reason.UNSUPPORTED_CODE, "unknown_holder_alg")
        try:
            holder_pub = holder_alg.from_cose_key(cose_key)
        except (KeyFormatError, ValueError):
            raise bad("cnf key") from None
        cats = c.get(C_CAT, [])
        if not isinstance(cats, list | tuple) or not all(isinstance(x, str) for x in cats):
            raise bad("cat")
        bd_raw, region = c.get(C_BD), c.get(C_RG, "")
        birth: date | None = None
        if bd_raw is not None:
            try:
                birth = date.fromisoformat(bd_raw) if isinstance(bd_raw, str) else None
            except ValueError:
                birth = None
            if birth is None:
                raise bad("bd")
        if not isinstance(region, str):
            raise bad("rg")
        ckey = self._pseudo.key("qrcert", f"{kid}/{cti.hex()}")
        assert isinstance(iat, int) and isinstance(exp, int)
        return HolderCertificate(
            kid=kid, issuer_alg=issuer_alg, iss=iss, iat=iat, exp=exp, cti=cti,
            holder_alg=holder_alg, holder_public_key=holder_pub, holder_key=hk.hex(),
            categories=frozenset(cats), birth_date=birth, region=region, credential_key=ckey,
        )
