"""Whatever the HTTP port refuses itself, it refuses as JSON with a 4xx: unknown routes, wrong methods, CDN writes."""

from __future__ import annotations

import httpx

from ferry.testing import StackProcess


def test_an_unknown_route_is_a_json_404(ferry_serve: StackProcess) -> None:
    answer = httpx.get(f"{ferry_serve.cdn_url}/no/such/route")

    assert answer.status_code == 404
    assert answer.json()["error_type"] == "NOT_FOUND"


def test_a_wrong_method_is_a_json_405_that_says_which_are_allowed(ferry_serve: StackProcess) -> None:
    answer = httpx.delete(f"{ferry_serve.cdn_url}/queue/ferry/sample/requests/some-id/cancel")

    assert answer.status_code == 405
    assert answer.json()["error_type"] == "METHOD_NOT_ALLOWED"
    assert "PUT" in answer.headers["Allow"]


def test_a_write_to_the_cdn_without_the_token_is_a_json_401(start_ferry) -> None:  # type: ignore[no-untyped-def]
    stack = start_ferry("--token", "secret")
    answer = httpx.put(f"{stack.cdn_url}/files/AAAAAAAAAAAAAAAAAAAAAA/a.png", content=b"x")

    assert answer.status_code == 401
    assert answer.json()["error_type"] == "UNAUTHORIZED"
    assert answer.headers["WWW-Authenticate"] == "Bearer"
