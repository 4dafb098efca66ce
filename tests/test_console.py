"""The console over real HTTPS (uvicorn, hub CA): log-in, roles enforced by the server,
CSRF on every POST, sessions, the audit log, 用卡轨迹 with its reason, rate limit and
privacy, the fleet filters, and the account CLI. The browser tests are in
``test_console_browser.py``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from starlette.routing import Route

from agent.cli import main
from sync.hub.console.accounts import AccountError, Accounts, may
from sync.hub.console.auth import check_routes
from sync.hub.console.trail import LOOKUPS_PER_MINUTE
from tests.fixtures.console import CARD_ID, PASSWORD, PSEUDO, SSN, ConsoleSite


def _raw_files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def test_pages_need_a_login(console_site: ConsoleSite) -> None:
    c = console_site.client()
    status, _, headers = c.request("/console/fleet")
    assert status == 303 and headers["location"].endswith("/console/login")
    assert c.request("/console/trail")[0] == 303


def test_login_sets_a_secure_httponly_strict_cookie_and_safe_headers(
        console_site: ConsoleSite) -> None:
    c = console_site.client()
    token = c.csrf("/console/login")
    status, _, headers = c.request("/console/login", {"csrf": token, "name": "vera",
                                                      "password": PASSWORD})
    assert status == 303
    cookie = headers["set-cookie"]
    assert "ykt_console=" in cookie and "secure" in cookie.lower()
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    status, text, headers = c.request("/console/fleet")
    assert status == 200 and "vera (viewer)" in text
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
    assert not re.search(r'(src|href)="https?://(?!127\.0\.0\.1)', text)   # no CDN


def test_wrong_passwords_are_refused_logged_and_limited(console_site: ConsoleSite) -> None:
    c = console_site.client()
    for _ in range(5):
        assert c.login("vera", "not the password at all") == 401
    assert c.login("vera") == 429          # even the right password, for a minute
    log = console_site.accounts.audit_log(user="vera")
    assert [e.action for e in log].count("login_failed") == 6
    assert all("not the password" not in e.reason + e.outcome for e in log)


def test_a_viewer_cannot_change_the_hotlist_even_with_a_valid_token(
        console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.login("vera") == 303
    token = c.csrf("/console/hotlist")
    status, text, _ = c.request("/console/hotlist", {"csrf": token, "identifier": CARD_ID,
                                                     "reason": "lost", "action": "add"})
    assert status == 403 and "may not" in text
    assert console_site.hotlist_calls == []
    refused = console_site.accounts.audit_log(user="vera", action="hotlist")
    assert refused and refused[0].outcome == "refused: role viewer"


def test_every_post_needs_the_csrf_token(console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.login("hank") == 303
    for token in (None, "x" * 43):
        form = {"identifier": CARD_ID, "reason": "lost", "action": "add"}
        if token:
            form["csrf"] = token
        status, text, _ = c.request("/console/hotlist", form)
        assert status == 403 and "CSRF" in text
    assert console_site.hotlist_calls == []
    # the log-in form too: a login CSRF cannot plant a session
    fresh = console_site.client()
    assert fresh.request("/console/login", {"name": "hank", "password": PASSWORD})[0] == 403


def test_check_routes_finds_an_unprotected_post() -> None:
    async def naked(request: object) -> None:
        return None

    with pytest.raises(AssertionError, match="not CSRF-checked"):
        check_routes([Route("/x", naked, methods=["POST"])])


def test_hotlist_operator_adds_a_card_hashed_at_the_hub(console_site: ConsoleSite,
                                                        tmp_path: Path) -> None:
    c = console_site.client()
    assert c.login("hank") == 303
    token = c.csrf("/console/hotlist")
    spaced = " ".join(CARD_ID[i:i + 4] for i in range(0, 32, 4)).lower()
    status, text, _ = c.request("/console/hotlist", {"csrf": token, "identifier": spaced,
                                                     "reason": "挂失 at the bank #881",
                                                     "action": "add"})
    assert status == 200 and "hotlist@1" in text
    assert console_site.hotlist_calls == [("add", "card", PSEUDO.card_key(CARD_ID),
                                           "挂失 at the bank #881")]
    assert CARD_ID not in text and CARD_ID.lower() not in text
    entry = console_site.accounts.audit_log(action="hotlist_add")[0]
    assert entry.user == "hank" and entry.outcome == "ok: hotlist@1"
    status, text, _ = c.request("/console/hotlist", {"csrf": token, "identifier": CARD_ID,
                                                     "reason": "x" * 65, "action": "add"})
    assert status == 400 and "reason" in text       # the publisher's own check
    status, text, _ = c.request("/console/hotlist", {"csrf": token, "identifier": "3.70302E+17",
                                                     "reason": "lost", "action": "add"})
    assert status == 400 and "spreadsheet" in text
    assert entry.target == "card 0011************************EEFF"
    console_site.accounts.close()
    raw = _raw_files(tmp_path)
    assert CARD_ID.encode() not in raw and CARD_ID.lower().encode() not in raw


def test_trail_for_an_auditor_in_beijing_time_with_reason_audited(
        console_site: ConsoleSite, tmp_path: Path) -> None:
    c = console_site.client()
    assert c.login("aud") == 303
    token = c.csrf("/console/trail")
    status, text, _ = c.request("/console/trail", {"csrf": token, "identifier": SSN,
                                                   "reason": "complaint 2026-118"})
    assert status == 200
    assert "holder 3703**********1234: 8 records" in text
    assert re.search(r"<td>\d{4}-\d\d-\d\d 08:00:00</td><td>bus-1</td><td>route K51 / "
                     r"stop S1</td><td>elderly_free</td><td>accepted</td>", text)
    assert "gate-1" in text and "museum_free" in text
    assert SSN not in text
    entry = console_site.accounts.audit_log(action="trail")[0]
    assert (entry.user, entry.target, entry.reason, entry.outcome) == (
        "aud", "holder 3703**********1234", "complaint 2026-118", "ok: 8 records")
    # by card: the same holder's card
    status, text, _ = c.request("/console/trail", {"csrf": token, "identifier": CARD_ID,
                                                   "reason": "complaint 2026-118"})
    assert "card 0011************************EEFF: 8 records" in text
    # no reason: refused, still audited
    status, text, _ = c.request("/console/trail", {"csrf": token, "identifier": SSN,
                                                   "reason": ""})
    assert status == 400 and "reason is required" in text
    console_site.accounts.close()
    assert SSN.encode() not in _raw_files(tmp_path)


def test_trail_lookups_are_rate_limited_per_user(console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.login("aud") == 303
    token = c.csrf("/console/trail")
    form = {"csrf": token, "identifier": SSN, "reason": "audit sample"}
    statuses = [c.request("/console/trail", form)[0] for _ in range(LOOKUPS_PER_MINUTE + 1)]
    assert statuses == [200] * LOOKUPS_PER_MINUTE + [429]
    assert console_site.accounts.audit_log(action="trail")[0].outcome == "refused: rate limit"


def test_only_auditors_look_up_trails_or_read_the_audit_log(console_site: ConsoleSite) -> None:
    for name in ("vera", "hank", "pia"):
        c = console_site.client()
        assert c.login(name) == 303
        assert c.request("/console/trail")[0] == 403
        assert c.request("/console/audit")[0] == 403
        token = c.csrf("/console/fleet")
        status, _, _ = c.request("/console/trail", {"csrf": token, "identifier": SSN,
                                                    "reason": "curious"})
        assert status == 403
    assert all(e.outcome.startswith("refused: role")
               for e in console_site.accounts.audit_log(action="trail"))


def test_fleet_filters(console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.login("vera") == 303

    def shown(query: str) -> list[str]:
        text = c.request("/console/fleet" + query)[1]
        return re.findall(r'/console/terminal/([\w-]+)"', text)

    assert shown("") == ["bus-1", "bus-2", "gate-1"]
    assert shown("?offline=1") == ["bus-2"]
    assert shown("?stale=1") == ["bus-2"]
    assert shown("?alarms=1") == ["gate-1"]
    assert shown("?offline=1&alarms=1") == []
    status, text, _ = c.request("/console/terminal/bus-2")
    assert status == 200 and "hotlisted" in text
    assert c.request("/console/terminal/nope")[0] == 404


def test_reports_policy_and_problems_pages(console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.login("vera") == 303
    text = c.request("/console/reports?from=2020-01-01&to=2030-12-31")[1]
    assert "15 decisions" in text and text.count("<svg") == 4
    assert "<title>08: 15</title>" in text                        # 00:00 UTC = 08 Beijing
    assert "<title>elderly: 8</title>" in text and "<title>hotlisted: 2</title>" in text
    assert "<title>K51: 6</title>" in text and "<title>museum: 2</title>" in text
    # the table by day: amounts and claims in fen (4 × 200 taken; 6 × 200 + 2 × 4000 claimed)
    row = re.search(r'<tr class="total">(.*?)</tr>', text, re.S)
    assert row and '<td class="num">800</td>' in row.group(1)
    assert '<td class="num">9200</td>' in row.group(1)
    status, text, _ = c.request("/console/reports?from=2030-01-01&to=2020-01-01")
    assert status == 400 and "after" in text
    text = c.request("/console/reports/settlement?month=2030-01")[1]
    assert "Settlement statement 2030-01" in text
    status, text, _ = c.request("/console/reports/settlement?month=13-2026")
    assert status == 400 and "YYYY-MM" in text
    text = c.request("/console/policy")[1]
    assert re.search(r"<td>city/bus</td><td>3</td><td class=\"num\">1</td>", text)
    assert "<td>museum/gate</td><td>7</td>" in text
    assert c.request("/console/problems")[0] == 200


def test_a_removed_account_loses_its_session(console_site: ConsoleSite) -> None:
    c = console_site.client()
    assert c.login("vera") == 303
    assert c.request("/console/fleet")[0] == 200
    console_site.accounts.remove("vera")
    assert c.request("/console/fleet")[0] == 303


def test_accounts_refuse_weak_input(tmp_path: Path) -> None:
    acc = Accounts(tmp_path / "a.db")
    with pytest.raises(AccountError, match="at least 12"):
        acc.add("ann", "viewer", "short")
    with pytest.raises(AccountError, match="role"):
        acc.add("ann", "root", PASSWORD)
    with pytest.raises(AccountError, match="account name"):
        acc.add("Robert'); DROP", "viewer", PASSWORD)
    acc.add("ann", "viewer", PASSWORD)
    assert acc.verify("ann", PASSWORD) is not None and acc.verify("ann", "x" * 12) is None
    assert acc.verify("nobody", PASSWORD) is None
    assert PASSWORD.encode() not in (tmp_path / "a.db").read_bytes()
    assert may("auditor", "trail") and not may("viewer", "hotlist")
    acc.close()


def test_cli_manages_accounts_with_the_password_from_stdin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "console.db"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["hub", "console", "user", "add", "lin", "--role", "auditor",
                 "--accounts", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "lin", "role": "auditor"}
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["hub", "console", "user", "add", "kim", "--role", "viewer",
                 "--accounts", str(db)]) == 2
    assert "at least 12" in capsys.readouterr().err
    assert main(["hub", "console", "user", "role", "lin", "viewer", "--accounts",
                 str(db)]) == 0
    assert main(["hub", "console", "user", "list", "--accounts", str(db), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1]) == [{"name": "lin", "role": "viewer",
                                                  "disabled": False}]
    assert main(["hub", "console", "audit", "--accounts", str(db), "--json"]) == 0
    actions = [e["action"] for e in json.loads(capsys.readouterr().out)]
    assert actions == ["user_role", "user_add"]
    assert main(["hub", "console", "user", "list"]) == 2       # no accounts file named


def test_cli_trail_reads_the_identifier_from_stdin(
        console_site: ConsoleSite, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db, accounts = console_site.store.path, console_site.accounts.path
    args = ["hub", "trail", "--db", str(db), "--accounts", str(accounts),
            "--reason", "ticket 7", "--json"]
    monkeypatch.delenv("YKT_PSEUDONYM_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert main(args) == 2
    assert "pseudonymisation key" in capsys.readouterr().err
    monkeypatch.setenv("YKT_PSEUDONYM_KEY", PSEUDO._key.hex())
    monkeypatch.setattr("sys.stdin", io.StringIO(SSN + "\n"))
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["masked"] == "3703**********1234" and len(out["records"]) == 8
    assert out["records"][0]["time_beijing"].endswith("08:00:00")
    entry = console_site.accounts.audit_log(action="trail")[0]
    assert entry.user.startswith("cli:") and entry.reason == "ticket 7"
    monkeypatch.setattr("sys.stdin", io.StringIO("3.70302E+17\n"))
    assert main(args) == 1
    assert "not a 社会保障号码" in capsys.readouterr().err


def test_ykt_hub_web_serves_console_and_metrics(console_site: ConsoleSite,
                                               tmp_path: Path) -> None:
    """The real command: ``ykt hub web --identity DIR --db HUBDB`` (one TLS listener)."""
    import os
    import subprocess
    import sys

    from simulator.broker import free_port
    from simulator.process import stop_process
    from sync.hub.ca import HubCA
    from tests.fixtures.console import METRICS_TOKEN, Browserless
    from tests.fixtures.logguard import watch_stderr

    ident = tmp_path / "web-identity"
    HubCA.init(ident)
    console_site.accounts.close()
    (ident / "console.db").write_bytes(console_site.accounts.path.read_bytes())
    port = free_port()
    err = tmp_path / "web.stderr"
    env = {**os.environ, "YKT_METRICS_TOKEN": METRICS_TOKEN,
           "YKT_PSEUDONYM_KEY": PSEUDO._key.hex()}
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "hub", "web", "--identity", str(ident),
             "--db", str(console_site.store.path), "--listen-port", str(port), "--offline"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    watch_stderr(err, "ykt hub web")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("hub web ready: https://127.0.0.1:"), err.read_text()
        c = Browserless(f"https://127.0.0.1:{port}", ident / "ca.crt")
        assert c.login("aud") == 303
        token = c.csrf("/console/trail")
        status, text, _ = c.request("/console/trail", {"csrf": token, "identifier": SSN,
                                                       "reason": "via the command"})
        assert status == 200 and "8 records" in text
        assert c.request("/metrics")[0] == 401
        status, text, _ = c.request("/metrics", headers={"Authorization":
                                                         f"Bearer {METRICS_TOKEN}"})
        assert status == 200 and "ykt_hub_records_ingested_total 15.0" in text
        assert c.request("/v1/ca")[0] == 200               # enrollment still there
    finally:
        code = stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


def test_the_console_on_postgresql(pg_dsn: str, tmp_path: Path) -> None:
    """The same traffic in a PostgreSQL store: fleet, reports, trail and metrics agree with
    the SQLite site's."""
    from tests.fixtures.console import METRICS_TOKEN, make_site

    server, site = make_site(tmp_path, db=pg_dsn)
    try:
        c = site.client()
        assert c.login("aud") == 303
        text = c.request("/console/fleet?stale=1")[1]
        assert re.findall(r'/console/terminal/([\w-]+)"', text) == ["bus-2"]
        text = c.request("/console/reports?from=2020-01-01&to=2030-12-31")[1]
        assert "15 decisions" in text and "<title>elderly: 8</title>" in text
        token = c.csrf("/console/trail")
        status, text, _ = c.request("/console/trail", {"csrf": token, "identifier": SSN,
                                                       "reason": "pg check"})
        assert status == 200 and "holder 3703**********1234: 8 records" in text
        text = c.request("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[1]
        assert "ykt_hub_records_ingested_total 15.0" in text
        assert 'ykt_hub_terminals{state="stale"} 1.0' in text
    finally:
        server.stop()
        site.store.close()
        site.accounts.close()
        if site.config.fleet is not None:
            site.config.fleet.close()
