"""The SSC application and the reference PSAM scheme in-process (no pcscd): SM4 vectors,
read_ssc against real virtual cards, and hypothesis fuzzing of every response parser."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.exceptions import ConfigError
from drivers.psam import TEST_KEYS, ReferenceKeys, SoftPsam, card_cryptogram, diversify, sm4_ecb
from drivers.ssc import SscCard, read_ssc
from drivers.ssc_records import (
    ALL_NEEDS,
    FIELDS,
    MAX_GET_RESPONSE,
    CardAuthFailed,
    CardError,
    CardReadError,
    MalformedResponse,
    NotSsc,
    check_needs,
    decode_bcd,
    decode_bcd_date,
    decode_record,
    parse_tlv,
    split_sw,
    transceive,
)
from simulator.vcard import ForeignCard, VirtualSscCard, card_for, card_population

POP = card_population(6, seed=5, today=date(2026, 11, 25))
PSAM = SoftPsam(TEST_KEYS)
ALL = ALL_NEEDS


class Direct:
    """A transport straight into a virtual card object (the card logic, no PC/SC)."""

    def __init__(self, card: object, replace_at: int = -1, garbage: bytes = b"") -> None:
        self.card, self.n, self.replace_at, self.garbage = card, 0, replace_at, garbage

    def transmit(self, apdu: bytes) -> bytes:
        self.n += 1
        resp: bytes = self.card.apdu(apdu)  # type: ignore[attr-defined]
        return self.garbage if self.n == self.replace_at else resp


def test_sm4_standard_vector() -> None:
    # GB/T 32907-2016 appendix A example 1
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert sm4_ecb(key, key).hex() == "681edf34d206965e86b3e94f536e4246"


def test_reference_scheme_round_trip() -> None:
    card_id = bytes(range(16))
    k = diversify(TEST_KEYS.internal, card_id)
    assert PSAM.verify_internal(card_id, b"12345678", card_cryptogram(k, b"12345678"))
    assert not PSAM.verify_internal(card_id, b"12345678", card_cryptogram(k, b"12345679"))
    assert not PSAM.verify_internal(card_id, b"12345678", b"short")
    with pytest.raises(ValueError):
        ReferenceKeys(b"x" * 15, b"y" * 16)
    assert "hidden" in repr(TEST_KEYS)


@pytest.mark.parametrize("holder", [h for h in POP if not {"cloned", "damaged"} & set(h.tags)],
                         ids=lambda h: f"{h.generation}-{h.tags[0]}")
def test_every_card_reads_all_fields(holder) -> None:  # type: ignore[no-untyped-def]
    data = read_ssc(SscCard(Direct(card_for(holder))), PSAM, ALL)
    assert (data.card_id, data.ssn, data.generation) == (holder.card_id, holder.ssn,
                                                        holder.generation)
    assert (data.valid_from, data.valid_until) == (holder.issued, holder.expires)
    assert (data.birth_date, data.name, data.region) == (holder.birth_date, holder.name,
                                                        holder.region)
    assert holder.ssn not in repr(data) and holder.name not in repr(data)


def test_apdu_counts_are_minimal() -> None:
    g3 = next(h for h in POP if h.generation == "3.0")
    g2 = next(h for h in POP if h.generation == "2.0")
    # SELECT, 01, 03, INTERNAL AUTH, GET CHALLENGE, EXTERNAL AUTH, 08 (+06 for valid_until)
    assert read_ssc(SscCard(Direct(card_for(g3))), PSAM, frozenset()).apdus == 7
    assert read_ssc(SscCard(Direct(card_for(g3))), PSAM).apdus == 8
    # T=0: INTERNAL AUTH answers 61 10 → GET RESPONSE; no external auth before EF06
    assert read_ssc(SscCard(Direct(card_for(g2))), PSAM).apdus == 7
    with pytest.raises(ValueError):
        read_ssc(SscCard(Direct(card_for(g2))), PSAM, {"shoe_size"})


def test_needs_are_checked_once_in_one_place() -> None:
    assert check_needs(["name", "region"]) == frozenset({"name", "region"})
    with pytest.raises(ConfigError, match=r"unknown card needs \['card_no'\]"):
        check_needs({"card_no"})          # 卡号 is not read: no credential field carries it


def test_endless_61xx_is_bounded() -> None:
    class Forever:
        sent = 0

        def transmit(self, apdu: bytes) -> bytes:
            self.sent += 1
            return b"\x61\x10"

    t = Forever()
    with pytest.raises(MalformedResponse, match="61xx"):
        transceive(t, bytes([0x00, 0x84, 0x00, 0x00, 0x08]))
    assert t.sent == 1 + MAX_GET_RESPONSE


def test_6c_resend_only_for_commands_with_le() -> None:
    sent: list[bytes] = []

    class SixC:
        def transmit(self, apdu: bytes) -> bytes:
            sent.append(apdu)
            return b"\x6c\x04"

    assert transceive(SixC(), bytes([0x00, 0x82, 0x00, 0x02, 0x02, 0xAA, 0xBB]))[1] == 0x6C04
    assert len(sent) == 1                 # case 3: no Le to correct, the data stays intact
    sent.clear()
    transceive(SixC(), bytes([0x00, 0xB2, 0x06, 0x2C, 0x00]))
    assert sent[1] == bytes([0x00, 0xB2, 0x06, 0x2C, 0x04])


@pytest.mark.parametrize(("value", "match"), [
    (bytes.fromhex("19851330"), "month out of range"),
    (bytes.fromhex("19850230"), "day out of range"),
    (bytes.fromhex("00000101"), "year out of range"),
    (bytes.fromhex("198A0230"), "nibble above 9 at byte 1"),
])
def test_date_errors_never_echo_the_value(value: bytes, match: str) -> None:
    with pytest.raises(MalformedResponse, match=match) as err:
        decode_bcd_date(value)
    assert value.hex() not in str(err.value).lower()
    assert value.hex()[:4] not in str(err.value).lower()   # not even the year


def test_tlv_errors_quote_no_value_bytes() -> None:
    # 出生日期 with a short length: the bytes after the first TLV are date digits
    with pytest.raises(MalformedResponse, match="offset 3 declares more bytes") as err:
        decode_record(FIELDS[0x0D], bytes.fromhex("0D0119850230"))
    assert "85" not in str(err.value) and "30" not in str(err.value)
    with pytest.raises(MalformedResponse, match="tag 0D declares 4 bytes, 2 present"):
        decode_record(FIELDS[0x0D], bytes.fromhex("0D041985"))


def test_bcd_error_names_the_byte() -> None:
    with pytest.raises(MalformedResponse, match="at byte 2$"):
        decode_bcd(bytes.fromhex("3701F2"))


def test_t0_wrong_le_is_resent() -> None:
    card = SscCard(Direct(card_for(POP.tagged("gen1")[0])))
    card.select()
    data, sw = card.command(bytes([0x00, 0xB2, 0x01, 0x2C, 0x00]))   # Le=00 → 6C12
    assert sw == 0x9000 and len(data) == 18 and card.apdus == 3


def test_cloned_damaged_foreign() -> None:
    with pytest.raises(CardAuthFailed) as err:
        read_ssc(SscCard(Direct(card_for(POP.tagged("cloned")[0]))), PSAM)
    assert err.value.card_id == POP.tagged("cloned")[0].card_id
    with pytest.raises(CardReadError, match="6581"):
        read_ssc(SscCard(Direct(card_for(POP.tagged("damaged")[0]))), PSAM)
    with pytest.raises(NotSsc):
        read_ssc(SscCard(Direct(ForeignCard())), PSAM)
    g3 = next(h for h in POP if h.generation == "3.0")
    with pytest.raises(CardAuthFailed, match="EXTERNAL"):  # PSAM with other external key
        other = SoftPsam(ReferenceKeys(TEST_KEYS.internal, b"\x01" * 16))
        read_ssc(SscCard(Direct(card_for(g3))), other)


@pytest.mark.parametrize(("responses", "match"), [
    ({0x06: b"\x06\x04\x20\x30\x90\x00"}, "卡有效期: TLV truncated"),
    ({0x06: b"\x06\x03\x20\x30\x01\x90\x00"}, "卡有效期: value is 3 bytes, expected 4"),
    ({0x06: b"\x06\x04\x20\x2a\x13\x45\x90\x00"}, "卡有效期: not BCD"),
    ({0x06: b"\x06\x04\x20\x26\x13\x45\x90\x00"}, "卡有效期: not a date"),
    ({0x08: b"\x6f\x42"}, "社会保障号码: SW 6F42 unknown status word"),
    ({0x01: b"\x13"}, "no status word"),
    ({0x03: b"\x03\x049.99\x90\x00"}, "unknown spec version"),
    ({0x01: b"\x07\x10" + bytes(16) + b"\x90\x00"}, "卡识别码: got tag 07"),
])
def test_malformed_responses_name_the_problem(responses: dict[int, bytes], match: str) -> None:
    holder = next(h for h in POP if h.generation == "3.0")
    with pytest.raises(MalformedResponse if "SW" not in match else CardReadError, match=match):
        read_ssc(SscCard(Direct(VirtualSscCard(holder, responses=responses))), PSAM)


# -- fuzzing --------------------------------------------------------------------------------
@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_tlv(data: bytes) -> None:
    try:
        tlvs = parse_tlv(data)
    except MalformedResponse as err:
        assert str(err)
        return
    assert sum(len(v) for _, v in tlvs) <= len(data)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 0xFE), st.binary(max_size=300)), max_size=6))
def test_tlv_round_trip(items: list[tuple[int, bytes]]) -> None:
    def enc(tag: int, v: bytes) -> bytes:
        n = len(v)
        ln = bytes([n]) if n < 0x80 else (b"\x81" + bytes([n]) if n < 256 else
                                          b"\x82" + n.to_bytes(2, "big"))
        return bytes([tag]) + ln + v
    assert parse_tlv(b"".join(enc(t, v) for t, v in items)) == items


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), st.binary(max_size=40))
def test_fuzz_record_decoders(tag: int, data: bytes) -> None:
    spec = FIELDS[tag]
    try:
        body, sw = split_sw(data)
    except MalformedResponse:
        assert len(data) < 2
    else:
        assert body + sw.to_bytes(2, "big") == data
    try:
        value = decode_record(spec, data)
    except MalformedResponse as err:
        assert str(err).startswith(spec.where)
    else:   # only a single TLV of the field's own tag and length decodes
        assert parse_tlv(data) == [(spec.tag, value)] and len(value) == spec.length
    try:
        day = decode_bcd_date(data)
    except MalformedResponse as err:
        assert "not" in str(err) or "must be 4 bytes" in str(err)
        assert data.hex()[:4] not in str(err) or len(data) < 2   # never echoes the digits
    else:
        assert data.hex() == day.strftime("%Y%m%d").rjust(8, "0")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 9), st.binary(max_size=40), st.sampled_from(["2.0", "3.0", "1.0"]))
def test_fuzz_read_ssc_with_garbage_at_any_step(step: int, garbage: bytes, gen: str) -> None:
    holder = next(h for h in POP if h.generation == "3.0")
    card = VirtualSscCard(holder, generation=gen)
    try:
        data = read_ssc(SscCard(Direct(card, step, garbage)), PSAM, ALL)
    except CardError as err:
        assert err.reason.value in {"read_error", "not_ssc", "card_auth_failed"}
        assert holder.ssn not in str(err) and holder.name not in str(err)
    else:  # the garbage happened to be a valid answer (e.g. 9000 to a command without data)
        assert data.card_id == holder.card_id


def test_virtual_psam_checks_the_key_reference() -> None:
    from simulator.vcard import VirtualPsam

    psam = VirtualPsam()
    assert psam.apdu(bytes([0x80, 0x88, 0x00, 0x02, 40]) + bytes(40)) == b"\x6a\x86"
    assert psam.apdu(bytes([0x80, 0xFA, 0x00, 0x01, 24]) + bytes(24) + b"\x10") == b"\x6a\x86"
    assert psam.apdu(bytes([0x80, 0x88, 0x00, 0x01, 40]) + bytes(40)) == b"\x69\x88"
    assert psam.apdu(bytes([0x00, 0xA4, 0x04, 0x00, 0x02, 0x3F, 0x00])) == b"\x6d\x00"


def test_pcsc_psam_needs_a_reader() -> None:
    from drivers.psam import PcscPsam

    with pytest.raises(ConfigError, match="psam_reader"):
        PcscPsam("")
