"""Enrollment end to end over HTTPS, renewal and revocation, against the real TLS broker
(``tls_broker``) and the hub's real web side (Starlette on uvicorn, TLS from the hub CA)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.enroll import CertificateExpired, EnrollmentError, enroll, renew, renewal_due
from agent.identity import TerminalIdentityPaths, load_certificate
from simulator.broker import free_port
from sync.hub.cli_trust import admin_settings
from sync.hub.dynsec import add_terminal
from sync.hub.enroll import EnrollmentRefused, Issued, issue_token, redeem
from sync.hub.web import EnrollmentServer
from sync.session import NOT_AUTHORIZED, BrokerSession, SessionRefused
from tests.fixtures.tls_broker import TlsBroker

ACCEPTED = (0x00, 0x10)


@pytest.fixture
def web(tls_broker: TlsBroker) -> Iterator[EnrollmentServer]:
    """The hub's enrollment endpoint; each enrollment adds the terminal to the broker."""
    ca = tls_broker.ca

    def on_issued(issued: Issued) -> None:
        add_terminal(admin_settings(ca, "127.0.0.1", tls_broker.broker.port),
                     issued.terminal, issued.channels)

    server = EnrollmentServer(ca, "127.0.0.1", free_port(), on_issued=on_issued)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _token(tb: TlsBroker, terminal: str, *channels: str, capsys: pytest.CaptureFixture[str]
           ) -> str:
    f = tb.root / f"{terminal}.token"
    assert main(["hub", "enroll", terminal, *[a for c in channels for a in ("--channel", c)],
                 "--identity", str(tb.ca.paths.dir), "--token-file", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["terminal"] == terminal and "token" not in out
    token = f.read_text().strip()
    assert token not in json.dumps(out)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    return token


def test_a_terminal_enrolls_over_https_and_then_speaks_only_its_part(
        tls_broker: TlsBroker, web: EnrollmentServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = _token(tls_broker, "C", "bus", capsys=capsys)
    ident = tmp_path / "C-identity"
    assert main(["enroll", "--hub", web.url, "--token", token, "--identity", str(ident),
                 "--json"]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert res["terminal"] == "C" and res["channels"] == ["bus"]
    paths = TerminalIdentityPaths(ident)
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ident.stat().st_mode) == 0o700
    assert load_certificate(paths.ca) == tls_broker.ca.cert
    assert paths.hub_key.read_bytes() == tls_broker.ca.paths.signing_pub.read_bytes()
    assert tls_broker.ca.paths.terminal_cert("C").exists()
    # the enrolled identity works on the broker, within its own topics only
    s = tls_broker.settings("A").model_copy(update={
        "tls_ca_file": paths.ca, "tls_cert_file": paths.cert, "tls_key_file": paths.key})
    with BrokerSession(s, "C") as c:
        c.connect()
        assert c.publish("ykt/v1/t/C/tx", b"{}") in ACCEPTED
        assert c.subscribe("ykt/v1/policy/bus/manifest") == 1
        assert c.subscribe("ykt/v1/policy/rail/manifest") == NOT_AUTHORIZED
        assert c.publish("ykt/v1/t/A/tx", b"{}") == NOT_AUTHORIZED
    # used once: a second enrollment with the same token is refused by the hub
    assert main(["enroll", "--hub", web.url, "--token", token, "--identity",
                 str(tmp_path / "again")]) == 1
    assert "already used" in capsys.readouterr().err
    # the token and the private key appear in no log, no output, no hub file
    key_pem = paths.key.read_text()
    secret = token.split(".")[2]
    logged = "\n".join(r.getMessage() for r in caplog.records) + out.out + out.err
    for needle in (secret, key_pem.splitlines()[1]):
        assert needle not in logged
        for f in [*tls_broker.ca.paths.dir.rglob("*"), *tls_broker.files.dir.rglob("*")]:
            if f.is_file():
                assert needle.encode() not in f.read_bytes(), f


def test_a_token_expires_and_names_its_hub(tls_broker: TlsBroker, web: EnrollmentServer,
                                           tmp_path: Path) -> None:
    ca = tls_broker.ca
    token, expires = issue_token(ca, "D", ["bus"], ttl_s=60)
    with pytest.raises(EnrollmentRefused, match="expired"):
        redeem(ca, token, b"", now=expires + 1)
    with pytest.raises(EnrollmentRefused, match="already used"):   # spent even so
        redeem(ca, token, b"")
    other, _ = issue_token(ca, "D", ["bus"])
    fp = other.split(".")[1]
    forged = other.replace(fp, "0" * 64)
    with pytest.raises(EnrollmentError, match="fingerprint"):
        enroll(web.url, forged, tmp_path / "D")
    assert not (tmp_path / "D" / "terminal.crt").exists()
    assert enroll(web.url, other, tmp_path / "D").terminal == "D"   # the real one works


def test_renewal_at_two_thirds_and_an_expired_certificate_says_re_enroll(
        tls_broker: TlsBroker, web: EnrollmentServer, tmp_path: Path) -> None:
    token, _ = issue_token(tls_broker.ca, "E", ["bus"])
    ident = tmp_path / "E"
    enroll(web.url, token, ident)
    paths = TerminalIdentityPaths(ident)
    first = load_certificate(paths.cert)
    old_key = paths.key.read_bytes()
    start, end = first.not_valid_before_utc, first.not_valid_after_utc
    assert not renewal_due(first, start + (end - start) * 0.6)
    assert renewal_due(first, start + (end - start) * 0.7)
    assert renew(web.url, ident) is None                     # fresh: not due
    res = renew(web.url, ident, now=start + (end - start) * 0.7)
    assert res is not None and res.renewed and res.terminal == "E"
    second = load_certificate(paths.cert)
    assert second.serial_number != first.serial_number
    assert paths.key.read_bytes() != old_key
    assert tls_broker.ca.paths.terminal_cert("E").read_bytes() == paths.cert.read_bytes()
    with pytest.raises(CertificateExpired, match="new token"):
        renew(web.url, ident, now=end + dt.timedelta(days=1))
    # back after weeks offline: a new token enrolls it again, under the same id
    again, _ = issue_token(tls_broker.ca, "E", ["bus"])
    assert enroll(web.url, again, ident).terminal == "E"
    assert load_certificate(paths.cert).serial_number != second.serial_number
    assert main(["enroll", "--hub", web.url, "--renew", "--identity", str(ident)]) == 0


def test_revoke_drops_a_connected_terminal_and_refuses_it_from_then_on(
        tls_broker: TlsBroker, capsys: pytest.CaptureFixture[str]) -> None:
    tb = tls_broker
    a = BrokerSession(tb.settings("A"), "A")
    a.connect()
    assert a.publish("ykt/v1/t/A/tx", b"{}") in ACCEPTED
    assert main(["hub", "revoke", "A", "--identity", str(tb.ca.paths.dir), "--broker-dir",
                 str(tb.files.dir), "--broker-pid", str(tb.broker.pid), "--port",
                 str(tb.broker.port), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revoked_serials"] == 1
    assert a.disconnected.wait(10), "the broker did not drop the revoked terminal"
    a.close()
    with pytest.raises(SessionRefused):
        BrokerSession(tb.settings("A"), "A").connect()
    with BrokerSession(tb.settings("B"), "B") as b:      # others are unaffected
        b.connect()
        assert b.publish("ykt/v1/t/B/tx", b"{}") in ACCEPTED
    with pytest.raises(EnrollmentRefused, match="revoked"):
        issue_token(tb.ca, "A")


def test_the_crl_is_reissued_with_every_revoked_serial(
        tls_broker: TlsBroker, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography import x509

    tb = tls_broker
    first = x509.load_pem_x509_crl(tb.files.crl.read_bytes())
    assert first.next_update_utc is not None
    assert first.next_update_utc - first.last_update_utc >= dt.timedelta(days=6)
    serial = load_certificate(tb.ca.paths.terminal_cert("B")).serial_number
    tb.ca.revoke("B")
    assert main(["hub", "crl", "--identity", str(tb.ca.paths.dir), "--broker-dir",
                 str(tb.files.dir), "--days", "14", "--json"]) == 0
    capsys.readouterr()
    second = x509.load_pem_x509_crl(tb.files.crl.read_bytes())
    assert second.next_update_utc is not None
    assert second.next_update_utc - second.last_update_utc >= dt.timedelta(days=13)
    assert second.is_signature_valid(tb.ca.cert.public_key())  # type: ignore[arg-type]
    assert second.get_revoked_certificate_by_serial_number(serial) is not None


def test_a_renewal_must_be_signed_with_the_current_certificates_key(
        tls_broker: TlsBroker) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from agent.identity import load_private_key, sign
    from sync.hub.ca import new_private_key
    from sync.hub.enroll import renew as hub_renew

    tb = tls_broker
    cert_pem = (tb.root / "A" / "terminal.crt").read_bytes()
    new_key = new_private_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        new_key, hashes.SHA256())
    csr_pem, csr_der = (csr.public_bytes(serialization.Encoding.PEM),
                        csr.public_bytes(serialization.Encoding.DER))
    stranger = new_private_key()
    with pytest.raises(EnrollmentRefused, match="not signed"):
        hub_renew(tb.ca, cert_pem, csr_pem, sign(stranger, csr_der))
    own = load_private_key(tb.root / "A" / "terminal.key")
    assert hub_renew(tb.ca, cert_pem, csr_pem, sign(own, csr_der)).terminal == "A"
