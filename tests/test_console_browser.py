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
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fixtures.console import CARD_ID, PASSWORD, PSEUDO, ConsoleSite

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (make test "
                              "installs them)"),
]

if CHROMIUM.exists():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait


def _spki_hash(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def browser(console_site: ConsoleSite) -> Iterator[webdriver.Chrome]:
    os.environ["SE_OFFLINE"] = "true"          # Selenium Manager: never download anything
    profile = tempfile.mkdtemp(prefix="ykt-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    pin = _spki_hash((console_site.cafile.parent / "web.crt").read_bytes())
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--lang=en-US",
                 f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={pin}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _click(driver: webdriver.Chrome, element_id: str) -> None:
    """Click ``element_id`` and wait for the page it loads (the old one goes stale)."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(page))
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
    WebDriverWait(browser, 20).until(expected_conditions.staleness_of(page))
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
