"""The playground in front of a stack that requires a token: it asks for one, keeps it for the tab, never puts
it in a URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.testing import StackProcess
from tests.browser.page import Page

SAMPLE_APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
TOKEN = "playground-secret-7f3a"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    data = tmp_path_factory.mktemp("playground-token") / "data"
    with StackProcess(["--data-dir", str(data), "--token", TOKEN, "--app", SAMPLE_APP]) as stack:
        yield stack


def enter_token(page: Page, token: str) -> None:
    page.wait_until(lambda: page.find("#token-form").is_displayed())
    page.find("#token-input").send_keys(token)
    page.find("#token-form button[type=submit]").click()


def test_the_page_asks_for_the_token_and_then_works(stack, page):
    page.driver.get(f"{stack.cdn_url}/playground#/sample/")
    page.js("sessionStorage.clear()")  # the browser is shared: start this origin's tab session empty
    page.driver.refresh()
    page.wait_until(lambda: page.find("#token-form").is_displayed())
    assert "requires a token" in page.find("#token-reason").text
    assert page.find_all("[data-endpoint]") == []  # nothing listed without it
    page.shot("asked")

    enter_token(page, "not-the-token")
    page.wait_until(lambda: "refused" in page.find("#token-reason").text)
    page.shot("refused")

    page.find("#token-input").clear()
    enter_token(page, TOKEN)
    page.wait_until(lambda: page.find("#endpoint-title").text == "sample /")
    assert not page.find("#token-form").is_displayed()
    page.set_value("text", "ahoy")
    page.run()
    page.wait_for_status("Completed")
    page.shot("completed")

    assert json.loads(page.find("#output-json").get_attribute("textContent")) == {"text": "ahoy"}
    assert page.js("return sessionStorage.getItem('ferry.playground.token')") == TOKEN
    requested = page.js("return performance.getEntriesByType('resource').map((entry) => entry.name)")
    assert requested and all(TOKEN not in url for url in [page.driver.current_url, *requested])
    assert TOKEN not in page.find("#code-text").get_attribute("textContent")  # the code says $FERRY_TOKEN

    page.driver.refresh()  # the same tab keeps it: not asked again
    page.wait_until(lambda: page.find("#endpoint-title").text == "sample /")
    assert not page.find("#token-form").is_displayed()
