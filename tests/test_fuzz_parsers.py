"""Every parser of outside input returns a value or raises its documented error type.

Card answers (APDU, TLV, BCD), QR text (Base45, COSE_Sign1, CWT), policy envelopes,
manifests, signatures and data parts, a bundle's small parts, config and profile files
(any text or bytes, deep nesting), trust documents and gate frames. The error each may
raise is the :class:`agent.errors.YktError` subclass its docstring names; anything else
(``ValueError``, ``zlib.error``, ``RecursionError``…) fails the property. Inputs are
bounded by the strategies; documented size caps are checked. The budget is the hypothesis
profile's (``tests/conftest.py``): ``ci`` in ``make test``, ``fuzz`` in ``make fuzz``;
the targets, budgets and what is not covered yet are in ``docs/testing.md``.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.codes import CodeVerifier, TrustStore, b45decode, b45encode
from agent.codes.base45 import Base45Error
from agent.codes.cose import CoseError, decode_sign1, loads_strict
from agent.codes.trust import TrustStoreError, parse_trust_document, read_trust_file
from agent.config import load_config
from agent.model import Credential, Rejection
from agent.policy.apply import _check_small_parts
from agent.policy.errors import BundleRefused
from agent.policy.manifest import MAX_ENVELOPE_BYTES, Envelope, Manifest, Root
from agent.policy.parts import read_rows, write_part
from agent.policy.signing import SigningKey, signed_manifest, verify_envelope
from agent.rules import RuleSetError, load_ruleset
from agent.tomlconf import ConfigFileError
from drivers.exceptions import GateError
from drivers.gate.protocol import MAX_PAYLOAD, FrameDecoder, GateStatus, encode_frame
from drivers.psam import TEST_KEYS, SoftPsam
from drivers.ssc import SscCard, read_ssc
from drivers.ssc_records import (
    ALL_NEEDS,
    FIELDS,
    MAX_GET_RESPONSE,
    CardError,
    MalformedResponse,
    decode_bcd,
    decode_bcd_date,
    decode_record,
    decode_ssn,
    decode_text,
    decode_version,
    parse_tlv,
    split_sw,
    transceive,
)
from profiles import profile_path
from simulator.vcard import VirtualSscCard, card_population
from tests.fixtures.fuzz import fuzz_examples
from tests.fixtures.qr import QR_NOW

# the budget comes from the loaded profile (deadline, derandomize, fuzz_examples())
_FUZZ = settings(max_examples=fuzz_examples(),
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])

# JSON-shaped values with the awkward corners: floats, huge ints, lone surrogates
_specials = st.sampled_from(["\ud800", "1e400", "", "0" * 40, 2.0, 10**400, math.nan, math.inf,
                             2**63, -1])
_scalars = (_specials | st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats() | st.text(max_size=12))
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=16)


def _nested(depth: int, opener: str, closer: str, inner: str = "1") -> str:
    return opener * depth + inner + closer * depth


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ykt-fuzz-") as d:
        yield Path(d)


# -- card answers: APDU status words, TLV, BCD -------------------------------------------
@_FUZZ
@given(st.binary(max_size=300))
def test_apdu_and_tlv(data: bytes) -> None:
    """Raises only :class:`MalformedResponse`; values never exceed the input."""
    for parse in (split_sw, parse_tlv, decode_bcd, decode_bcd_date, decode_text,
                  decode_version, decode_ssn):
        try:
            parse(data)
        except MalformedResponse:
            pass
    for spec in FIELDS.values():
        try:
            assert len(decode_record(spec, data)) == spec.length
        except MalformedResponse:
            pass


_HOLDER = next(iter(card_population(3, seed=9)))
_PSAM = SoftPsam(TEST_KEYS)


class _Garbling:
    """A card transport that answers ``garbage`` to the ``at``-th command."""

    def __init__(self, card: VirtualSscCard, at: int, garbage: bytes) -> None:
        self.card, self.n, self.at, self.garbage = card, 0, at, garbage

    def transmit(self, apdu: bytes) -> bytes:
        self.n += 1
        answer = self.card.apdu(apdu)
        return self.garbage if self.n == self.at else answer


@_FUZZ
@given(st.integers(1, 12), st.binary(max_size=64), st.sampled_from(["1.0", "2.0", "3.0"]))
def test_card_session_with_a_hostile_answer(at: int, garbage: bytes, gen: str) -> None:
    """A whole read with any one answer replaced: a credential or a :class:`CardError`."""
    try:
        read_ssc(SscCard(_Garbling(VirtualSscCard(_HOLDER, generation=gen), at, garbage)),
                 _PSAM, ALL_NEEDS)
    except CardError:
        pass


class _Scripted:
    """A card (or PSAM) transport that gives the scripted answers in turn, then 6F00."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers, self.given = list(answers), list[bytes]()

    def transmit(self, apdu: bytes) -> bytes:
        self.given.append(self.answers.pop(0) if self.answers else b"\x6f\x00")
        return self.given[-1]


_answer = st.binary(max_size=6) | st.tuples(st.binary(max_size=4), st.sampled_from(
    [0x61, 0x6C, 0x90, 0x69]), st.integers(0, 255)).map(lambda t: t[0] + bytes(t[1:]))
_answers = st.lists(_answer, max_size=24) | st.lists(      # a card stuck in 61xx
    st.binary(max_size=3).map(lambda b: b + b"\x61\x10"), min_size=30, max_size=40)


@_FUZZ
@given(st.binary(min_size=4, max_size=12), _answers)
def test_apdu_exchange(apdu: bytes, answers: list[bytes]) -> None:
    """``61xx``/``6Cxx`` handling over any answers: (data, SW) or :class:`MalformedResponse`,
    after a bounded number of commands (one resend, then at most MAX_GET_RESPONSE)."""
    card = _Scripted(answers)
    try:
        data, sw = transceive(card, apdu)
    except MalformedResponse:
        pass
    else:   # every answer had a status word, and the data is theirs without it
        assert all(len(a) >= 2 for a in card.given)
        assert sw == int.from_bytes(card.given[-1][-2:], "big") and sw >> 8 != 0x61
        assert data.endswith(card.given[-1][:-2])
    assert len(card.given) <= 2 + MAX_GET_RESPONSE


# -- QR text: YKT1 = Base45 of COSE_Sign1 with CWT claims ---------------------------------
@_FUZZ
@given(st.text(max_size=600))
def test_base45(text: str) -> None:
    try:
        raw = b45decode(text)
    except Base45Error:
        return
    assert b45encode(raw) == text.upper() or len(raw) <= len(text)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=40)
    | st.text(max_size=12) | st.floats(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.integers(-70000, 20) | st.text(max_size=4), inner, max_size=4), max_leaves=12)


@_FUZZ
@given(st.binary(max_size=400) | cbor_values.map(lambda v: cbor2.dumps(v)))
def test_cbor_and_cose(raw: bytes) -> None:
    for parse in (loads_strict, decode_sign1):
        try:
            parse(raw)
        except CoseError:
            pass


@_FUZZ
@given(st.text(max_size=1200) | st.binary(max_size=700).map(lambda b: "YKT1:" + b45encode(b)))
def test_qr_text(qr_verifier: CodeVerifier, text: str) -> None:
    """The verifier answers every text with a credential or a rejection it meant to give
    (its catch-all, ``unexpected:…``, is a parser bug)."""
    res = qr_verifier.verify(text, now=QR_NOW)
    assert isinstance(res, Credential | Rejection)
    if isinstance(res, Rejection):
        assert not res.detail.startswith("unexpected"), res.detail


# -- policy envelopes, manifests, signer roots ------------------------------------------
_KEY = SigningKey.generate()
_ROOT = Root(serial=1, keys=[_KEY.public])
_GOOD = json.loads(Envelope(manifest=signed_manifest(Manifest(
    channel="city/370302/bus", version=3, created="2026-11-01T00:00:00Z",
    expires="2027-11-01T00:00:00Z", root_serial=1, parts=[]), [_KEY])).to_bytes())


def _verify(payload: bytes) -> None:
    try:
        verify_envelope(Envelope.parse(payload), _ROOT)
    except BundleRefused:
        pass


@_FUZZ
@given(st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_envelope_bytes(payload: bytes) -> None:
    _verify(payload)


_MANIFEST_KEYS = [*sorted(_GOOD["manifest"]["signed"]), "delta_from", "totals", "parts", "x"]


@_FUZZ
@given(st.sampled_from(_MANIFEST_KEYS), _specials | json_values, st.booleans())
def test_manifest_field_of_any_type(key: str, value: Any, as_root: bool) -> None:
    """A genuine envelope with one field of the manifest (or of a root rotation) replaced
    by any JSON value: refused with a :class:`BundleRefused`, never a crash, and never
    accepted (the signature covers every field; a rotation whose serial is not above the
    trusted root's is ignored, as it would be genuine)."""
    doc = json.loads(json.dumps(_GOOD))
    if as_root:
        root = _ROOT.model_dump(mode="json")
        root["serial"] = 2
        root[key if key in root else "serial"] = value
        doc["roots"] = [{"signed": root, "signatures": doc["manifest"]["signatures"]}]
    else:
        doc["manifest"]["signed"][key] = value
    assume(doc != _GOOD)
    try:
        _, root = verify_envelope(Envelope.parse(json.dumps(doc).encode()), _ROOT)
    except BundleRefused:
        return
    # only a rotation that is not newer than the trusted root may be ignored
    assert as_root and root == _ROOT, (key, value)


_signature = st.fixed_dictionaries({
    "kid": st.just(_KEY.public.kid) | st.text(max_size=16),
    "alg": st.sampled_from(["ES256", "EdDSA", "SM2", "none", ""]),
    "sig": st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
    | st.text(max_size=20)})


@_FUZZ
@given(st.lists(_signature, max_size=3))
def test_manifest_signatures_of_any_shape(signatures: list[dict[str, str]]) -> None:
    """Signatures by the trusted key id over other bytes, of any length or alphabet,
    by unknown kids or algorithms: refused with :class:`BundleRefused`, never accepted."""
    doc = json.loads(json.dumps(_GOOD))
    doc["manifest"]["signatures"] = signatures
    with pytest.raises(BundleRefused):
        verify_envelope(Envelope.parse(json.dumps(doc).encode()), _ROOT)


@_FUZZ
@given(st.integers(10, 5000), st.sampled_from(["[", "{\"a\":"]))
def test_envelope_nested_deep(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = _nested(depth, opener, closer)
    _verify(('{"manifest":{"signed":{"a":' + inner + '},"signatures":[]}}').encode())


def test_envelope_size_is_capped() -> None:
    """Beyond :data:`MAX_ENVELOPE_BYTES` the envelope is refused before it is parsed (the
    message says so; valid JSON of that size would otherwise parse)."""
    big = json.dumps({**_GOOD, "inline": {"x": "A" * MAX_ENVELOPE_BYTES}}).encode()
    with pytest.raises(BundleRefused, match="exceeds"):
        Envelope.parse(big)


# -- data parts (gzip'd tab-separated lines) ---------------------------------------------
_KEYS32 = st.text("0123456789abcdef", min_size=32, max_size=32)
_GENUINE_ROWS = [(f"{i:032x}", "standard", "2026-01-01", "2027-01-01") for i in range(60)]


@_FUZZ
@given(data=st.data(), how=st.sampled_from(["bytes", "text", "mutated"]))
def test_data_part(scratch: Path, data: st.DataObject, how: str) -> None:
    path = scratch / "part"
    if how == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=400)))
    elif how == "text":
        head = data.draw(st.sampled_from(["#ykt-part v1 entitlements snapshot\n", ""]))
        body = data.draw(st.text(max_size=400) | st.lists(st.tuples(
            st.sampled_from("+-x"), _KEYS32, st.text(max_size=6)), max_size=5).map(
            lambda rows: "".join(f"{o}\t{k}\t{t}\t\t\n" for o, k, t in rows)))
        path.write_bytes(gzip.compress((head + body).encode("utf-8", "surrogatepass")))
    else:
        write_part(path, "entitlements", "snapshot", _GENUINE_ROWS)
        raw = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        path.write_bytes(bytes(raw))
    try:
        for row in read_rows(path, "entitlements", "snapshot"):
            assert row[0] == "+" and len(row) == 5
    except BundleRefused:
        pass


@_FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 5000).map(lambda d: _nested(d, '{"a":', "}").encode()),
       st.sampled_from(["issuers", "settings", "rules"]))
def test_small_parts(raw: bytes, slot: str) -> None:
    """Issuer keys, settings and rule sets of a bundle: a value or a :class:`BundleRefused`."""
    try:
        if slot == "rules":
            _check_small_parts({"bus_validator": raw}, None, None)
        else:
            _check_small_parts({}, raw if slot == "issuers" else None,
                               raw if slot == "settings" else None)
    except BundleRefused:
        pass


# -- configuration and profile files ------------------------------------------------------
_PROFILE = profile_path("bus_validator").read_text(encoding="utf-8")
_CONFIG = '[terminal]\nid = "BUS-1"\ndemo = true\n[cards]\nbackend = "sim"\n'
_toml_text = (st.text(max_size=300)
              | st.integers(1, 3000).map(lambda d: "a = " + _nested(d, "[", "]"))
              | st.integers(1, 3000).map(lambda d: "a = " + _nested(d, "{b = ", "}"))
              | st.lists(st.sampled_from(["[terminal]", "[[rule]]", "id = 1", "x = [1,",
                                           '"k" = {', "a.b.c = 2", "[cards]", "t = 1e400",
                                           "d = 0000-01-01", 'options = {x = "\\ud800"}']),
                         max_size=8).map("\n".join))


def _mutated(base: str, data: st.DataObject) -> bytes:
    raw = bytearray(base.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=6))
    return bytes(raw)


@_FUZZ
@pytest.mark.parametrize("kind", ["config", "profile"])
@given(data=st.data(), how=st.sampled_from(["text", "bytes", "mutated"]))
def test_config_and_profile_files(scratch: Path, kind: str, data: st.DataObject,
                                  how: str) -> None:
    """A config or rule set file of any content: a value, or a :class:`ConfigFileError`
    whose lines start with the file name (a rule set also :class:`RuleSetError`)."""
    path = scratch / f"{kind}.toml"
    if how == "text":
        path.write_bytes(data.draw(_toml_text).encode("utf-8", "surrogatepass"))
    elif how == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=300)))
    else:
        path.write_bytes(_mutated(_CONFIG if kind == "config" else _PROFILE, data))
    try:
        load_config(path) if kind == "config" else load_ruleset(path)
    except ConfigFileError as err:
        assert all(p.startswith(str(path)) for p in err.problems)
    except RuleSetError:
        assert kind == "profile"


# -- trust documents ----------------------------------------------------------------------
_PEM = _KEY.public.public_key
_issuer = st.fixed_dictionaries({"kid": st.text(max_size=6) | json_values,
                                 "public_key": st.just(_PEM) | json_values},
                                optional={"alg": json_values | st.sampled_from(["EdDSA", "SM2"]),
                                          "iss": json_values, "not_before": json_values,
                                          "not_after": json_values | st.just("2027-01-01T00:00:00Z"),
                                          "x": json_values})
_trust_docs = (json_values | st.fixed_dictionaries({"issuers": st.lists(_issuer, max_size=3)},
                                                   optional={"version": json_values}))


@_FUZZ
@given(_trust_docs)
def test_trust_document(doc: Any) -> None:
    try:
        keys, _ = parse_trust_document(doc)
    except TrustStoreError:
        return
    TrustStore(keys)                  # what it parsed is usable as is


@_FUZZ
@given(data=st.data(), suffix=st.sampled_from([".json", ".toml"]))
def test_trust_file(scratch: Path, data: st.DataObject, suffix: str) -> None:
    path = scratch / f"issuers{suffix}"
    raw = data.draw(st.binary(max_size=300) | _toml_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
                    | _trust_docs.map(lambda d: json.dumps(d).encode())
                    | st.integers(1, 5000).map(lambda d: _nested(d, "[", "]").encode()))
    path.write_bytes(raw)
    try:
        read_trust_file(path)
    except TrustStoreError:
        pass


# -- gate frames --------------------------------------------------------------------------
@_FUZZ
@given(st.lists(st.binary(max_size=80) | st.builds(
    encode_frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=MAX_PAYLOAD)),
    max_size=8))
def test_gate_frames(chunks: list[bytes]) -> None:
    """The decoder never raises and its buffer never outgrows one frame; a STATUS payload
    parses or raises :class:`GateError`."""
    d = FrameDecoder()
    for chunk in chunks:
        for frame in d.feed(chunk):
            assert len(frame.payload) <= MAX_PAYLOAD
            try:
                GateStatus.parse(frame.payload)
            except GateError:
                pass
        assert len(d._buf) <= MAX_PAYLOAD + 6


@_FUZZ
@given(st.text(max_size=200))
def test_inline_part_text(text: str) -> None:
    env = Envelope.model_validate({**_GOOD, "inline": {"a" * 64: text}})
    try:
        env.inline_bytes("a" * 64)
    except BundleRefused:
        pass


# -- online hotlist manifests (whatever the online key signs) ----------------------------
_HOT = SigningKey.generate()
_HOT_ROOT = Root(serial=1, keys=[_KEY.public], hotlist_keys=[_HOT.public])
_ONLINE: dict[Path, Any] = {}


def _online(scratch: Path) -> Any:
    """One terminal-side :class:`OnlineHotlist` for the module (a refused offer changes
    nothing; an accepted one only raises the sequence)."""
    from agent.policy.apply import InProcessRunner, PolicyApplier
    from agent.policy.online import OnlineHotlist
    from agent.store import PolicyStore

    if scratch not in _ONLINE:
        store = PolicyStore(scratch / "online" / "store.db")
        applier = PolicyApplier(store, channel="city/370302/bus", anchor=_HOT_ROOT,
                                runner=InProcessRunner(), clock=lambda: QR_NOW)
        _ONLINE[scratch] = OnlineHotlist(applier, clock=lambda: QR_NOW)
    return _ONLINE[scratch]


_ONLINE_GOOD = {"type": "ykt-online-hotlist", "channel": "city/370302/bus", "sequence": 1,
                "since": 0, "created": "2026-11-01T00:00:00Z",
                "expires": "2099-11-01T00:00:00Z", "root_serial": 1, "parts": []}


@_FUZZ
@given(st.sampled_from([*sorted(_ONLINE_GOOD), "x"]), _specials | json_values,
       st.binary(max_size=200))
def test_online_manifest_signed_by_the_online_key(scratch: Path, key: str, value: Any,
                                                  inline: bytes) -> None:
    """Any document the online hotlist key signs, with any inline bytes: applied only as
    a hotlist delta, else refused with :class:`BundleRefused`; never a crash."""
    from agent.policy.manifest import SignedManifest, sha256_hex
    from agent.policy.signing import sign_document

    signed = {**_ONLINE_GOOD, key: value}
    sha = sha256_hex(inline)
    if key == "x":
        signed = {**_ONLINE_GOOD, "parts": [{"name": "hotlist.delta", "kind": "hotlist",
                                             "mode": "delta", "sha256": sha,
                                             "size": len(inline), "inline": True}]}
    try:
        sigs = sign_document(signed, [_HOT])
    except (ValueError, RecursionError):
        return                          # no canonical form: nothing could be signed
    payload = json.dumps({"manifest": SignedManifest(signed=signed, signatures=sigs)
                          .model_dump(mode="json"),
                          "inline": {sha: base64.b64encode(inline).decode()}}).encode()
    try:
        _online(scratch).offer(payload)
    except BundleRefused:
        pass
