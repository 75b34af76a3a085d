"""CORS: off unless `--cors-origin` names an origin; then only that origin's pages may read the HTTP API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from ferry.testing import StackProcess

ALLOWED = "https://app.example:8443"
OTHER = "https://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data = tmp_path_factory.mktemp("cors") / "data"
    stack = StackProcess(["--data-dir", str(data), "--cors-origin", ALLOWED]).start()
    with httpx.Client(base_url=stack.cdn_url, timeout=30) as client:
        yield client
    stack.stop()


def test_a_preflight_from_an_allowed_origin_names_what_it_may_send(http: httpx.Client) -> None:
    answer = http.options("/queue/ferry/sample", headers={"Origin": ALLOWED, **PREFLIGHT})

    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in answer.headers  # tokens travel in a header, never cookies


def test_a_preflight_from_any_other_origin_is_refused(http: httpx.Client) -> None:
    answer = http.options("/queue/ferry/sample", headers={"Origin": OTHER, **PREFLIGHT})

    assert answer.status_code == 403 and "Access-Control-Allow-Origin" not in answer.headers


def test_answers_are_readable_by_the_allowed_origin_only_errors_included(http: httpx.Client) -> None:
    allowed = http.post("/queue/ferry/no-such-app", json={}, headers={"Origin": ALLOWED})
    other = http.post("/queue/ferry/no-such-app", json={}, headers={"Origin": OTHER})
    unrouted = http.get("/nowhere", headers={"Origin": ALLOWED})

    assert allowed.status_code == 404 and allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Fal-Error-Type" in allowed.headers["Access-Control-Expose-Headers"]
    assert other.status_code == 404 and "Access-Control-Allow-Origin" not in other.headers
    assert unrouted.status_code == 404 and unrouted.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_a_streamed_answer_is_readable_by_the_allowed_origin_too(http: httpx.Client) -> None:
    """Its headers go out before the stream's body: marked as they are sent, not afterwards."""
    body = b'{"url": "data:text/plain;base64,aGVsbG8="}'
    envelope = b"\x00" + len(body).to_bytes(4, "big") + body
    headers = {"Origin": ALLOWED, "Content-Type": "application/connect+json"}
    with http.stream("POST", "/ferry.v1.DownloaderService/Download", content=envelope, headers=headers) as answer:
        answer.read()

    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in answer.headers["Vary"]


def test_every_answer_varies_by_origin_so_no_cache_hands_one_origins_answer_to_another(http: httpx.Client) -> None:
    assert "Origin" in http.get("/nowhere", headers={"Origin": OTHER}).headers["Vary"]
    assert "Origin" in http.get("/metrics").headers["Vary"]


def test_without_the_flag_no_origin_gets_cors_headers(ferry_serve: StackProcess) -> None:
    with httpx.Client(base_url=ferry_serve.cdn_url) as http:
        preflight = http.options("/queue/ferry/sample", headers={"Origin": ALLOWED, **PREFLIGHT})
        answer = http.post("/queue/ferry/sample", json={}, headers={"Origin": ALLOWED})

    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Origin" not in answer.headers


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/path", "ftp://app.example", "*"])
def test_an_origin_that_is_not_one_is_refused_at_start(origin: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "serve", "--cors-origin", origin],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--cors-origin" in done.stderr
