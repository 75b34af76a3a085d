"""One headless chromium for every browser test (Debian's `chromium` and `chromium-driver`, which `make install`
installs), driven by Selenium; each test gets it back with a clean tab, at desktop size, and saves a
screenshot of each state it checks under its own tmp dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.browser.page import Page

DESKTOP = (1280, 1000)


def headless_chromium() -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        raise RuntimeError("chromium or chromedriver is not installed: `make install` installs Debian's packages")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers, where chromium's own sandbox cannot start
        "--disable-dev-shm-usage",  # /dev/shm is 64 MiB in a container: too small for a renderer
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
    ):
        options.add_argument(argument)
    # Downloads are refused, not saved: an attachment the page links to must not land on this machine's disk.
    options.add_experimental_option("prefs", {"download_restrictions": 3})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="session")
def chromium() -> Iterator[webdriver.Chrome]:
    driver = headless_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def page(chromium: webdriver.Chrome, tmp_path: Path) -> Iterator[Page]:
    chromium.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    chromium.set_window_size(*DESKTOP)
    yield Page(chromium, tmp_path / "screenshots")
    chromium.get("about:blank")
