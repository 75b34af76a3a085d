"""The playground as a test sees it: where its parts are, waits for what it shows, screenshots of each state."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")
# The control a field's value is typed into (a number field's box, not its slider).
TYPED = "input:not([type=range]):not([type=file]), textarea, select"

# Records every text the request's status line shows, and every heading of the outputs (partial or not), from
# the nodes each change added: events can come faster than a test could poll, or an observer be called, for them.
RECORD_STATUSES = """
const texts = (records) => records.flatMap((record) => [...record.addedNodes].map((node) => node.textContent));
window.seenStatuses = [];
new MutationObserver((records) => window.seenStatuses.push(...texts(records)))
  .observe(document.getElementById("run-status"), {childList: true});
window.seenHeadings = [];
new MutationObserver((records) => window.seenHeadings.push(...texts(records)))
  .observe(document.getElementById("outputs-heading"), {childList: true});
"""


class Page:
    def __init__(self, driver: webdriver.Chrome, screenshots: Path) -> None:
        self.driver = driver
        self.screenshots = screenshots
        self.screenshots.mkdir(parents=True, exist_ok=True)

    def open(self, base_url: str, endpoint: str = "") -> None:
        """The playground at `base_url`, showing `endpoint` ("app/path"), once its form is built."""
        self.driver.get(f"{base_url}/playground#/{endpoint}")
        if endpoint:
            self.wait_until(lambda: self.driver.find_element(By.ID, "endpoint-title").text.replace(" ", "") == endpoint)

    def shot(self, name: str) -> Path:
        """The whole page, not only what the window shows, as `name`.png."""
        path = self.screenshots / f"{name}.png"
        path.write_bytes(full_page_png(self.driver))
        return path

    def wait_until(self, condition: Callable[[], T], timeout: float = 20) -> T:
        def check(_driver: Any) -> T:
            return condition()

        return WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(check)

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def find_all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def field(self, path: str, control: str = TYPED) -> WebElement:
        return self.find(f'[data-path="{path}"] :is({control})')

    def set_value(self, path: str, value: str, control: str = TYPED) -> None:
        element = self.field(path, control)
        element.clear()
        element.send_keys(value)

    def run(self) -> None:
        """Press Run, recording every status the request shows from then on."""
        self.driver.execute_script(RECORD_STATUSES)
        self.find("#submit").click()

    def status(self) -> str:
        return self.find("#run-status").text

    def seen_statuses(self) -> list[str]:
        return list(self.driver.execute_script("return window.seenStatuses"))

    def seen_output_headings(self) -> list[str]:
        return list(self.driver.execute_script("return window.seenHeadings"))

    def wait_for_status(self, starts_with: str, timeout: float = 30) -> str:
        return self.wait_until(lambda: self.status() if self.status().startswith(starts_with) else None, timeout)

    def js(self, script: str, *arguments: Any) -> Any:
        return self.driver.execute_script(script, *arguments)

    def has_horizontal_scroll(self) -> bool:
        return bool(self.js("return document.documentElement.scrollWidth > document.documentElement.clientWidth"))


def full_page_png(driver: webdriver.Chrome) -> bytes:
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    return base64.b64decode(shot["data"])
