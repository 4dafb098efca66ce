"""SSC cards through the real PC/SC stack: pcscd + vpcd + pyscard, virtual cards and PSAM."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import date

import pytest

from agent.model import Reason
from agent.pseudonym import mask_id, mask_name
from drivers.pcsc import PcscCardSource, PcscTransport
from drivers.psam import TEST_KEYS, PcscPsam, PsamError, SoftPsam
from drivers.ssc import MAX_GET_RESPONSE, SscCard
from simulator.pcscd import Pcscd, VirtualCardRig
from simulator.vcard import ForeignCard, VirtualPsam, VirtualSscCard, card_population
from tests.fixtures.pcsc import PSEUDO, Collector

pytestmark = pytest.mark.pcsc

POP = card_population(8, seed=3)


def _g3():  # type: ignore[no-untyped-def]
    return next(h for h in POP if h.generation == "3.0" and h.tags[0] in ("standard", "elderly"))


def test_every_card_in_the_population(card_rig: VirtualCardRig, card_source, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    _source, sink = card_source
    details = []
    for h in POP:
        card_rig.present(h)
        p = sink.next()
        card_rig.pull()
        details.append(p.rejection.detail if p.rejection else "")
        assert p.source == f"pcsc:{card_rig.card_reader}" and p.seen_ns > 0
        if "cloned" in h.tags:
            assert p.credential is None and p.rejection is not None
            assert p.rejection.reason == Reason.CARD_AUTH_FAILED
            assert p.rejection.credential_key == PSEUDO.card_key(h.card_id)
            continue
        if "damaged" in h.tags:
            assert p.rejection is not None and p.rejection.reason == Reason.READ_ERROR
            assert "卡有效期" in p.rejection.detail and "6581" in p.rejection.detail
            continue
        c = p.credential
        assert c is not None, p.rejection
        assert c.kind == "ssc_card" and c.authenticated_by == "psam:sm4"
        assert c.credential_key == PSEUDO.card_key(h.card_id)
        assert c.holder_key == PSEUDO.holder_key(h.ssn)
        assert (c.generation, c.valid_until, c.birth_date) == (h.generation, h.expires,
                                                               h.birth_date)
        assert c.masked_id == mask_id(h.ssn) and p.apdus in (7, 8)
        if "expired" in h.tags:
            assert c.valid_until is not None and c.valid_until < date.today()
    for h in POP:  # only keyed hashes and masks reach the logs and the (journaled) details
        for raw in (h.ssn, h.name, h.card_id, f"{h.birth_date:%Y%m%d}"):
            assert raw not in caplog.text and not any(raw in d for d in details), raw


def test_card_pulled_after_any_apdu(card_rig: VirtualCardRig, card_source) -> None:  # type: ignore[no-untyped-def]
    _source, sink = card_source
    g3 = _g3()
    g2 = next(h for h in POP if h.generation == "2.0" and h.tags[0] not in ("cloned", "damaged"))
    cases = [(g3, k) for k in range(8)] + [(g2, 3), (g2, 4)]
    for holder, k in cases:
        card_rig.present(holder, pull_after=k)
        p = sink.next()
        assert p.credential is None and p.rejection is not None, (holder.generation, k)
        assert p.rejection.reason == Reason.CARD_REMOVED, (k, p.rejection)
        assert p.rejection.journal is False
        assert p.apdus <= k + 1
    card_rig.present(g3, pull_after=8)   # gone only after the last APDU: the read is complete
    assert sink.next().credential is not None
    card_rig.present(g2)                  # and the next tap works
    p = sink.next()
    assert p.credential is not None and p.credential.holder_key == PSEUDO.holder_key(g2.ssn)


@pytest.mark.parametrize(("card", "reason", "detail"), [
    (ForeignCard(), Reason.NOT_SSC, "6A82"),
    (VirtualSscCard(POP.holders[0], responses={0x06: b"\x06\x04\x20\x30\x90\x00"}),
     Reason.READ_ERROR, "卡有效期: TLV truncated"),
    (VirtualSscCard(POP.holders[0], responses={0x06: b"\x06\x02\x20\x30\x90\x00"}),
     Reason.READ_ERROR, "value is 2 bytes, expected 4"),
    (VirtualSscCard(POP.holders[0], responses={0x08: b"\x6f\x42"}),
     Reason.READ_ERROR, "SW 6F42 unknown status word"),
    (VirtualSscCard(POP.holders[0], responses={0x01: b"\xde"}),
     Reason.READ_ERROR, "no status word"),
    (VirtualSscCard(POP.holders[0], responses={"internal": b"\x00\x11\x22\x90\x00"}),
     Reason.READ_ERROR, "INTERNAL AUTHENTICATE answered 3 bytes"),
], ids=["foreign", "truncated", "wrong-length", "unknown-sw", "garbage", "short-auth"])
def test_refusals_are_specific(card_rig: VirtualCardRig, card_source, card, reason, detail) -> None:  # type: ignore[no-untyped-def]
    _source, sink = card_source
    card_rig.present(card)
    p = sink.next()
    assert p.rejection is not None and p.rejection.reason == reason
    assert detail in p.rejection.detail and p.rejection.journal is True


def _old_style(h):  # type: ignore[no-untyped-def]
    """``h`` with a 15-digit 社会保障号码 (2-digit year): its birth date is read from EF06/0D."""
    return dataclasses.replace(h, ssn=h.ssn[:6] + h.ssn[8:17])


@pytest.mark.parametrize("garble", ["month", "nibble"])
def test_garbled_birth_date_is_not_echoed(card_rig: VirtualCardRig, card_source, caplog,  # type: ignore[no-untyped-def]
                                          garble: str) -> None:
    caplog.set_level(logging.DEBUG)
    _source, sink = card_source
    h = _old_style(_g3())
    digits = f"{h.birth_date:%Y%m%d}"
    bad = digits[:4] + "13" + digits[6:] if garble == "month" else digits[:3] + "A" + digits[4:]
    card_rig.present(VirtualSscCard(h, responses={
        0x0D: b"\x0d\x04" + bytes.fromhex(bad) + b"\x90\x00"}))
    p = sink.next()
    assert p.rejection is not None and p.rejection.reason == Reason.READ_ERROR
    detail = p.rejection.detail
    assert "出生日期" in detail
    assert ("month out of range" if garble == "month" else "nibble above 9 at byte 1") in detail
    for raw in (bad, bad.upper(), bad.lower(), digits, h.card_id, h.ssn):
        assert raw not in detail and raw not in caplog.text, raw
    assert p.rejection.credential_key == PSEUDO.card_key(h.card_id)   # hotlistable all the same
    card_rig.pull()
    card_rig.present(h)                  # intact: the birth date is read from EF06/0D
    c = sink.next().credential
    assert c is not None and c.birth_date == h.birth_date


def test_card_reset_mid_read_is_read_again(card_rig: VirtualCardRig, pcscd: Pcscd,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from smartcard import scard

    import drivers.pcsc

    connections: list[PcscTransport] = []

    class ResetByAnotherClient(PcscTransport):
        """The first connection: before its 4th APDU a second pyscard handle resets the card."""

        def __init__(self, ctx, reader, **kw) -> None:  # type: ignore[no-untyped-def]
            super().__init__(ctx, reader, **kw)
            connections.append(self)
            self.sent = 0

        def transmit(self, apdu: bytes) -> bytes:
            if connections[0] is self and self.sent == 3:
                _hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
                hr, other, _proto = scard.SCardConnect(
                    ctx, self.reader, scard.SCARD_SHARE_SHARED,
                    scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
                assert hr == scard.SCARD_S_SUCCESS
                scard.SCardDisconnect(other, scard.SCARD_RESET_CARD)
                scard.SCardReleaseContext(ctx)
            self.sent += 1
            return super().transmit(apdu)

    h = _g3()
    card_rig.present(h)
    pcscd.wait_card(card_rig.card_reader)
    monkeypatch.setattr(drivers.pcsc, "PcscTransport", ResetByAnotherClient)
    source = PcscCardSource(PSEUDO, reader=card_rig.card_reader, psam=SoftPsam(TEST_KEYS))
    try:
        p = source.read_present(card_rig.card_reader)
    finally:
        source.stop()
    assert p.credential is not None, p.rejection
    assert p.credential.holder_key == PSEUDO.holder_key(h.ssn)
    assert len(connections) == 2
    assert p.apdus == 4 + 8          # SELECT, 01, 03, the refused INTERNAL AUTH; then a full read


class EndlessPsam:
    """A PSAM card that answers every command with 61 10 (more data), forever."""

    atr = VirtualPsam().atr

    def __init__(self) -> None:
        self.apdus_seen = 0

    def reset(self) -> None:
        pass

    def apdu(self, command: bytes) -> bytes:
        self.apdus_seen += 1
        return b"\x61\x10"


def test_psam_answering_61xx_forever_fails_clearly(dual_rig: VirtualCardRig) -> None:
    bad = EndlessPsam()
    assert dual_rig.second_slot is not None
    dual_rig.second_slot.insert(bad)
    dual_rig.pcscd.wait_card(dual_rig.second_reader)
    psam = PcscPsam(dual_rig.second_reader)
    try:
        with pytest.raises(PsamError, match="PSAM answered nonsense: .*61xx"):
            psam.verify_internal(bytes(16), bytes(8), bytes(16))
        assert bad.apdus_seen == 1 + MAX_GET_RESPONSE
    finally:
        psam.close()


def test_t0_get_response_and_wrong_le(card_rig: VirtualCardRig, pcscd: Pcscd) -> None:
    from smartcard import scard

    card_rig.present(POP.tagged("gen1")[0])
    pcscd.wait_card(card_rig.card_reader)
    _hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    t = PcscTransport(ctx, card_rig.card_reader)
    try:
        card = SscCard(t)
        card.select()
        data, sw = card.command(bytes([0x00, 0xB2, 0x01, 0x2C, 0x00]))   # 6C12 → resend
        assert (sw, len(data), card.apdus) == (0x9000, 18, 3)
        assert len(card.internal_authenticate(b"12345678")) == 16          # 6110 → GET RESPONSE
        assert card.apdus == 5
    finally:
        t.close()
        scard.SCardReleaseContext(ctx)


@pytest.mark.expect_log("drivers.base", r"presentation sink raised for pcsc")
def test_raising_sink_does_not_stop_monitoring(card_rig: VirtualCardRig) -> None:
    got = Collector()
    calls = []

    def sink(p):  # type: ignore[no-untyped-def]
        calls.append(p)
        if len(calls) == 1:
            raise RuntimeError("subscriber bug")
        got(p)

    source = PcscCardSource(PSEUDO, reader=card_rig.card_reader, psam_reader=card_rig.psam_reader)
    source.start(sink)
    try:
        card_rig.present(_g3())
        card_rig.pcscd.wait_card(card_rig.card_reader)
        card_rig.pull()
        card_rig.present(_g3())
        assert got.next().credential is not None
    finally:
        source.stop()


def test_two_cards_at_once(dual_rig: VirtualCardRig) -> None:
    sink = Collector()
    source = PcscCardSource(PSEUDO, psam=SoftPsam(TEST_KEYS))   # watches both readers
    source.start(sink)
    try:
        a, b = POP.holders[2], POP.holders[3]
        dual_rig.present_two(a, b)
        seen = [sink.next(), *sink.drain(1.5)]
        multiple = [p for p in seen if p.rejection and p.rejection.reason == Reason.MULTIPLE_CARDS]
        assert multiple and multiple[0].rejection.detail == "请单张刷卡"   # type: ignore[union-attr]
        dual_rig.pull_all()
        dual_rig.pcscd.wait_card(dual_rig.card_reader, present=False)
        dual_rig.pcscd.wait_card(dual_rig.second_reader, present=False)
        sink.drain()
        dual_rig.present(a)
        p = sink.next()
        assert p.credential is not None and p.credential.holder_key == PSEUDO.holder_key(a.ssn)
    finally:
        source.stop()


def test_recovers_after_pcscd_restart(card_rig: VirtualCardRig, card_source, pcscd: Pcscd) -> None:  # type: ignore[no-untyped-def]
    if not pcscd.owned:
        pytest.skip("pcscd was already running (not started by the tests): cannot restart it")
    source, sink = card_source
    card_rig.present(_g3())
    assert sink.next().credential is not None
    card_rig.pull()
    pcscd.restart()                       # every reader disappears and comes back
    # the PSAM's slot reconnects on its own: a tap before pcscd sees it again is refused
    # "PSAM not reachable" (a race the repeated runs on a loaded machine found)
    pcscd.wait_card(card_rig.psam_reader, timeout=30)
    card_rig.present(_g3())
    p = sink.next(timeout=6)
    assert p.credential is not None, p.rejection
    assert source.contexts_established >= 2


def test_cli_card_read_masks_everything(card_rig: VirtualCardRig, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from agent.cli import main

    h = _g3()
    monkeypatch.setenv("YKT_PSEUDONYM_KEY", b"test-pseudonym-key-card".hex())
    card_rig.present(h)
    rc = main(["card", "read", "--psam-reader", card_rig.psam_reader, "--json", "--timeout", "5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    shown = json.loads(out)
    assert shown["name"] == mask_name(h.name) and shown["id"] == mask_id(h.ssn)
    assert shown["holder_key"] == PSEUDO.holder_key(h.ssn) and shown["region"] == h.region
    assert h.ssn not in out and h.name not in out


def test_cli_card_read_key_from_credentials_and_no_card(card_rig: VirtualCardRig, capsys,  # type: ignore[no-untyped-def]
                                                        monkeypatch, tmp_path) -> None:
    from agent.cli import main

    monkeypatch.delenv("YKT_PSEUDONYM_KEY", raising=False)
    (tmp_path / "pseudonym-key").write_text(b"test-pseudonym-key-card".hex())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    h = _g3()
    card_rig.present(h)            # already in the field when the command starts
    card_rig.pcscd.wait_card(card_rig.card_reader)
    args = ["card", "read", "--psam-reader", card_rig.psam_reader, "--json", "--timeout"]
    assert main([*args, "5"]) == 0
    assert json.loads(capsys.readouterr().out)["holder_key"] == PSEUDO.holder_key(h.ssn)
    card_rig.pull()
    card_rig.pcscd.wait_card(card_rig.card_reader, present=False)
    assert main([*args, "0.5"]) == 1
    assert "no card within 0.5 s" in capsys.readouterr().err


def test_cli_card_read_takes_the_readers_from_the_terminal_config(  # type: ignore[no-untyped-def]
        card_rig: VirtualCardRig, capsys, monkeypatch, tmp_path) -> None:
    from agent.cli import main

    monkeypatch.setenv("YKT_PSEUDONYM_KEY", "00" * 16)
    cfg = tmp_path / "terminal.toml"
    cfg.write_text('[terminal]\nid = "BUS-C"\n[cards]\nbackend = "pcsc"\n'
                   f'options = {{ reader = "{card_rig.card_reader}", psam = "pcsc", '
                   f'psam_reader = "{card_rig.psam_reader}" }}\n', encoding="utf-8")
    card_rig.present(_g3())
    rc = main(["card", "read", "--config", str(cfg), "--json", "--timeout", "5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = json.loads(captured.out)
    assert out["reader"] == card_rig.card_reader
    # without a PSAM reader anywhere: a usage error that lists the readers
    monkeypatch.setattr("agent.cli.card._configured_options", lambda path: {})
    assert main(["card", "read", "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "give --psam-reader NAME" in err and card_rig.psam_reader in err
