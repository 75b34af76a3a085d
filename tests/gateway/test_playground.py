"""The playground's page and assets over HTTP: served by name only, under a CSP that no inline script passes,
and shipped in the wheel. (What the page does is tested in a browser: tests/browser/.)"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ferry.services.gateway.playground import ASSETS, PAGE, PLAYGROUND_DIR, playground_routes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def http() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    app.add_routes(playground_routes())
    async with TestClient(TestServer(app)) as client:
        yield client


def directives(policy: str) -> dict[str, list[str]]:
    parsed = (part.split() for part in policy.split(";") if part.strip())
    return {name: values for name, *values in parsed}


async def test_the_page_is_served_under_a_strict_content_security_policy(http):
    for path in ("/playground", "/playground/"):
        response = await http.get(path)
        assert response.status == 200
        assert response.content_type == "text/html"
        policy = directives(response.headers["Content-Security-Policy"])
        assert policy["default-src"] == ["'self'"]
        assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no other origin
        assert policy["connect-src"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["object-src"] == ["'none'"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(("name", "content_type"), sorted(ASSETS.items()))
async def test_each_asset_is_served_with_its_type(http, name, content_type):
    response = await http.get(f"/playground/{name}")
    assert response.status == 200
    assert response.content_type == content_type
    assert await response.read() == (PLAYGROUND_DIR / name).read_bytes()
    assert "Content-Security-Policy" in response.headers


@pytest.mark.parametrize("path", ["/playground/nope.js", "/playground/..%2Fplayground.py", "/playground/index.htm"])
async def test_a_name_that_is_not_an_asset_is_a_json_404(http, path):
    response = await http.get(path)
    assert response.status == 404
    assert (await response.json())["error_type"] == "NOT_FOUND"


class InlineCode(HTMLParser):
    """What a strict CSP would block: inline scripts, event-handler attributes, style attributes and blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> block")
        self.found += [f"{tag} {name}=" for name in names if name.startswith("on") or name == "style"]


def test_the_page_has_no_inline_code_its_policy_would_block():
    parser = InlineCode()
    parser.feed((PLAYGROUND_DIR / PAGE).read_text())
    assert parser.found == []


def test_every_file_of_the_page_is_served_and_shipped_in_the_wheel():
    files = {path.name for path in PLAYGROUND_DIR.iterdir()}
    assert files == {PAGE, *ASSETS}
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["ferry.services.gateway"]
    for name in files:
        assert any(fnmatch.fnmatch(f"playground_page/{name}", pattern) for pattern in patterns), name
