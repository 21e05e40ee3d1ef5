"""The built leaderboard site in a real headless browser (Debian's chromium, driven by Selenium).

Skipped with a reason when chromium, chromedriver or selenium is missing — except in CI
(``CI=true``), where .ci/run installs them and a missing browser is a failure. The
screenshot goes to ``$FMR_TEST_ARTIFACTS`` when set, else to the test's tmp folder.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from test_leaderboard import make_board  # tests/ is on sys.path (pytest rootdir import mode)

from fmr_bench.leaderboard import build_boards

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


def _require_browser():
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if not CHROMIUM:
        missing.append("chromium (apt-get install chromium)")
    if not DRIVER:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        msg = "headless-browser test needs " + ", ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI must run it: .ci/run installs them)")
        pytest.skip(msg)


@pytest.fixture
def site(tmp_path):
    folder = make_board(tmp_path / "boards")
    out = tmp_path / "site"
    build_boards([folder], out)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(tmp_path):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _names(driver) -> list[str]:
    rows = driver.find_elements("css selector", "#board tbody tr")
    return [r.get_attribute("data-name") for r in rows if r.is_displayed()]


def _wait(cond, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    return cond()


def test_site_in_headless_chromium(site, browser, tmp_path):
    out, url = site
    browser.get(f"{url}/index.html")
    assert browser.find_element("link text", "Toy board")
    browser.find_element("link text", "Toy board").click()
    _wait(lambda: browser.current_url.endswith("/toy.html"))
    assert _errors(browser) == []

    # the board's own order first: FMR high to low, missing last
    assert _names(browser) == ["both-far", "measured-a", "paper-only", "both-close", "pending"]
    fmr_head = browser.find_element("xpath", "//table[@id='board']/thead/tr/th[normalize-space()='FMR']")
    fmr_head.click()  # ascending, missing still last
    assert _names(browser) == ["both-close", "paper-only", "measured-a", "both-far", "pending"]
    assert "sorted-asc" in fmr_head.get_attribute("class")
    fmr_head.click()
    assert _names(browser) == ["both-far", "measured-a", "paper-only", "both-close", "pending"]
    browser.find_element("xpath", "//table[@id='board']/thead/tr/th[normalize-space()='Model']").click()
    assert _names(browser) == sorted(_names(browser))

    box = browser.find_element("id", "filter")
    box.send_keys("both")
    assert sorted(_names(browser)) == ["both-close", "both-far"]
    assert browser.find_element("id", "count").text == "2 of 5 entries"
    box.clear()
    box.send_keys("unreliable")
    assert _names(browser) == ["both-far"]
    box.clear()
    box.send_keys(" ")
    assert len(_names(browser)) == 5

    images = browser.find_elements("css selector", "figure img")
    assert len(images) == 4
    for img in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", img), (
            img.get_attribute("src"))

    shot = Path(os.environ.get("FMR_TEST_ARTIFACTS") or tmp_path) / "leaderboard-toy.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    browser.find_element("id", "csv-link").click()
    downloaded = _wait(lambda: [p for p in browser.downloads.glob("*.csv")])
    assert downloaded, "the CSV link downloaded nothing"
    got = _wait(lambda: downloaded[0].read_bytes() if not list(browser.downloads.glob("*.crdownload")) else b"")
    assert got == (out / "toy.csv").read_bytes()
    assert _errors(browser) == []


def test_missing_browser_skips_locally_and_fails_in_ci(monkeypatch):
    import test_leaderboard_browser as mod

    monkeypatch.setattr(mod, "CHROMIUM", None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs .*chromium"):
        mod._require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run it"):
        mod._require_browser()
