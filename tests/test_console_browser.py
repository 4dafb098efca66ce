"""The console in a real headless Chromium from Debian's packages, driven by Selenium the way
a person uses it: log in, filter the fleet, open a report, and the server refusing what
the page would let a person try (a viewer's hotlist entry, a form without its CSRF token).

Chromium trusts exactly the hub's web certificate (``--ignore-certificate-errors-spki-list``
with its key's SHA-256), not every certificate. Selenium is given the driver and the
browser binary, so it never looks for or downloads one.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.model import Reason
from agent.policy.signing import SigningKey
from simulator.broker import Mosquitto
from sync.hub.hotlist import mqtt_publisher
from sync.hub.web_console import hotlist_publisher
from sync.link import MqttSettings
from tests.fixtures.console import CARD_ID, PASSWORD, PSEUDO, ConsoleSite, make_site
from tests.fixtures.hub import wait_until
from tests.fixtures.policy import PSEUDO as POLICY_PSEUDO
from tests.fixtures.policy import PolicyEnv
from tests.test_daemon_policy import _tap, _terminal

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (make test "
                              "installs them)"),
]

if CHROMIUM.exists():
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait


def _spki_hash(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def open_browser(monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[[ConsoleSite], webdriver.Chrome]]:
    """Starts a fresh headless Chromium for a site (trusting that site's key only)."""
    monkeypatch.setenv("SE_OFFLINE", "true")   # Selenium Manager: never download anything
    started: list[tuple[webdriver.Chrome, str]] = []

    def start(site: ConsoleSite) -> webdriver.Chrome:
        profile = tempfile.mkdtemp(prefix="ykt-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = str(CHROMIUM)
        pin = _spki_hash((site.cafile.parent / "web.crt").read_bytes())
        for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--lang=en-US", f"--user-data-dir={profile}",
                     f"--ignore-certificate-errors-spki-list={pin}"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
        driver.set_page_load_timeout(30)
        started.append((driver, profile))
        return driver

    try:
        yield start
    finally:
        for driver, profile in started:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(console_site: ConsoleSite,
            open_browser: Callable[[ConsoleSite], webdriver.Chrome]) -> webdriver.Chrome:
    return open_browser(console_site)


def _stale(element: Any) -> bool:
    """Whether ``element`` left the document. ChromeDriver answers a node of a page being
    replaced with either "stale element" or "Node … does not belong to the document" (an
    unknown error: a race the repeated runs found); both mean the old page is gone."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as err:
        if "does not belong to the document" in str(err):
            return True
        raise
    return False


def _click(driver: webdriver.Chrome, element_id: str) -> None:
    """Click ``element_id`` and wait for the page it loads (the old one goes stale)."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 20).until(lambda _d: _stale(page))
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def _login(driver: webdriver.Chrome, site: ConsoleSite, name: str) -> None:
    driver.get(site.url + "/console/fleet")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Log in"
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    _click(driver, "login")
    who = driver.find_elements(By.ID, "who")
    assert who and who[0].text.startswith(name), driver.page_source[-1500:]


def _terminals(driver: webdriver.Chrome) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#fleet tbody td a")]


def test_log_in_filter_the_fleet_and_open_a_report(browser: webdriver.Chrome,
                                                  console_site: ConsoleSite) -> None:
    _login(browser, console_site, "vera")
    assert _terminals(browser) == ["bus-1", "bus-2", "gate-1"]
    browser.find_element(By.ID, "filter-offline").click()
    _click(browser, "apply-filter")
    assert _terminals(browser) == ["bus-2"]
    assert "offline=1" in browser.current_url
    browser.find_element(By.ID, "filter-offline").click()
    browser.find_element(By.ID, "filter-alarms").click()
    _click(browser, "apply-filter")
    assert _terminals(browser) == ["gate-1"]
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.LINK_TEXT, "gate-1").click()
    WebDriverWait(browser, 20).until(lambda _d: _stale(page))
    assert browser.find_element(By.ID, "terminal-name").text == "gate-1"

    _click(browser, "nav-reports")
    for field, value in (("from", "01/01/2020"), ("to", "12/31/2030")):
        browser.find_element(By.ID, field).send_keys(value)
    _click(browser, "show-report")
    assert "15 decisions" in browser.find_element(By.ID, "report-total").text
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 4 and all(c.size["width"] > 100 for c in charts)
    assert charts[3].get_attribute("aria-label") == "Refusals by reason"
    # the page loaded nothing from anywhere but the hub
    hosts = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).host)")
    assert set(hosts) <= {console_site.url.split("//")[1]}


def test_a_viewer_is_refused_by_the_server(browser: webdriver.Chrome,
                                          console_site: ConsoleSite) -> None:
    _login(browser, console_site, "vera")
    _click(browser, "nav-hotlist")
    assert "may not change" in browser.find_element(By.ID, "readonly").text
    browser.find_element(By.ID, "identifier").send_keys(CARD_ID)
    browser.find_element(By.ID, "hotlist-reason").send_keys("lost")
    _click(browser, "hotlist-submit")        # the page lets one try
    assert "may not do this" in browser.find_element(By.ID, "error").text
    assert console_site.hotlist_calls == []
    assert browser.find_elements(By.ID, "nav-trail") == []
    browser.get(console_site.url + "/console/trail")
    assert "may not" in browser.find_element(By.ID, "error").text


def test_a_form_without_its_csrf_token_is_refused(browser: webdriver.Chrome,
                                                 console_site: ConsoleSite) -> None:
    _login(browser, console_site, "hank")
    _click(browser, "nav-hotlist")
    browser.execute_script("document.querySelector('#hotlist-form input[name=csrf]').remove()")
    browser.find_element(By.ID, "identifier").send_keys(CARD_ID)
    browser.find_element(By.ID, "hotlist-reason").send_keys("lost")
    _click(browser, "hotlist-submit")
    assert "CSRF" in browser.find_element(By.ID, "error").text
    assert console_site.hotlist_calls == []
    # the same form with its token goes through
    _click(browser, "nav-hotlist")
    browser.find_element(By.ID, "identifier").send_keys(CARD_ID)
    browser.find_element(By.ID, "hotlist-reason").send_keys("挂失 #12")
    _click(browser, "hotlist-submit")
    assert "hotlist@1" in browser.find_element(By.ID, "done").text
    assert console_site.hotlist_calls == [("add", "card", PSEUDO.card_key(CARD_ID), "挂失 #12")]


def test_a_card_reported_lost_in_the_console_is_refused_at_a_running_terminal(
        policy_env: PolicyEnv, broker: Mosquitto, tmp_path: Path,
        open_browser: Callable[[ConsoleSite], webdriver.Chrome]) -> None:
    """The hotlist operator's form → :func:`sync.hub.hotlist.publish_change` (online
    hotlist key, every channel) → a real Mosquitto → a running terminal daemon, which
    refuses the card within 5 s of the form's answer."""
    env = policy_env
    hot = SigningKey.generate()
    env.repo.rotate([env.key], [env.key.public], hotlist_keys=[hot.public])
    settings = MqttSettings(host=broker.host, port=broker.port)
    env.build(env.population_sources())
    env.repo.publish(settings)
    server, site = make_site(tmp_path / "site", pseudonymizer=POLICY_PSEUDO,
                             hotlist=hotlist_publisher(env.repo.root, hot, POLICY_PSEUDO,
                                                       mqtt_publisher(settings)))
    terminal, cards, outcomes = _terminal(env, broker, tmp_path / "t")
    try:
        wait_until(lambda: terminal.store is not None and terminal.store.info.version == 1,
                   30, "policy v1 to be applied")
        victim = env.pop.tagged("standard")[0]
        assert _tap(terminal, cards, outcomes, victim).decision.accepted
        driver = open_browser(site)
        _login(driver, site, "hank")
        _click(driver, "nav-hotlist")
        driver.find_element(By.ID, "identifier").send_keys(victim.card_id)
        driver.find_element(By.ID, "hotlist-reason").send_keys("挂失 at the bank")
        _click(driver, "hotlist-submit")
        assert f"{env.repo.channel} online #1" in driver.find_element(By.ID, "done").text
        assert terminal.downlink.online.wait_applied(1, timeout=5)
        assert _tap(terminal, cards, outcomes, victim).decision.reason is Reason.HOTLISTED
        entry = site.accounts.audit_log(action="hotlist_add")[0]
        assert entry.user == "hank" and entry.outcome == f"ok: {env.repo.channel} online #1"
        assert victim.card_id not in entry.target
    finally:
        terminal.stop()
        server.stop()
        site.store.close()
        site.accounts.close()
