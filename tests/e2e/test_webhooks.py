"""Webhooks: a submitted request's result POSTed to its caller's URL, signed per Standard Webhooks, retried.

The receiver is a real HTTP server on loopback; signatures are checked with the
scheme's own library (`standardwebhooks`), not with Ferry's code.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from standardwebhooks import Webhook

import ferry
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2
from tests.harness import BackgroundLoop, serve_on_loopback, wait_for
from tests.services.test_metrics import labelled, samples

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes length").decode()


class Receiver:
    """Records every POST; answers each path with the statuses queued for it (200 once they run out)."""

    def __init__(self, loop: BackgroundLoop) -> None:
        self.loop = loop
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.answers: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner, self.url = loop.run(serve_on_loopback(app))

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.received.append((name, dict(request.headers), await request.read()))
        if name in self.hang:
            await self._closing.wait()
        statuses = self.answers.get(name, [])
        return web.Response(status=statuses.pop(0) if statuses else 200)

    def bodies(self, name: str) -> list[dict[str, object]]:
        return [json.loads(body) for path, _, body in self.received if path == name]

    def close(self) -> None:
        async def close() -> None:
            self._closing.set()  # a hanging answer ends, so the server can stop
            await self._runner.cleanup()

        self.loop.run(close())


@pytest.fixture
def receiver(background_loop: BackgroundLoop) -> Iterator[Receiver]:
    receiver = Receiver(background_loop)
    yield receiver
    receiver.close()


@pytest.fixture
def stack(start_ferry) -> StackProcess:
    return start_ferry(
        "--app", APP, "--webhook-secret", SECRET, "--webhook-retry-seconds", "0.2", "--allow-private-networks"
    )


def submit(stack: StackProcess, arguments: dict[str, object], webhook_url: str, path: str = "/") -> str:
    with stack.client() as client:
        request = inference_pb2.SubmitRequest(
            app_id="sample", path=path, input_json=json.dumps(arguments), webhook_url=webhook_url
        )
        return str(client.inference.Submit(request).request_id)


def webhook(stack: StackProcess, request_id: str) -> inference_pb2.WebhookDelivery:
    with stack.client() as client:
        return client.inference.GetStatus(inference_pb2.GetStatusRequest(request_id=request_id)).webhook


def delivered(stack: StackProcess, request_id: str) -> bool:
    return webhook(stack, request_id).state == inference_pb2.WEBHOOK_STATE_DELIVERED


def test_a_result_is_posted_once_signed_so_the_schemes_own_library_verifies_it(stack, receiver) -> None:
    request_id = submit(stack, {"text": "hi"}, f"{receiver.url}/done")
    wait_for(lambda: delivered(stack, request_id), "the webhook to be delivered")

    [(_, headers, body)] = [entry for entry in receiver.received if entry[0] == "done"]
    verified = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    assert verified == {
        "request_id": request_id,
        "app_id": "sample",
        "status": "OK",
        "payload": {"text": "hi"},
        "error": None,
    }
    assert webhook(stack, request_id).attempts == 1


def test_a_failed_request_posts_its_error(stack, receiver) -> None:
    request_id = submit(stack, {"text": "x"}, f"{receiver.url}/failed", path="/fail")
    wait_for(lambda: delivered(stack, request_id), "the webhook to be delivered")
    [body] = receiver.bodies("failed")
    assert body["status"] == "ERROR" and body["payload"] is None
    assert body["error"]["code"] == "INTERNAL" and "model exploded" in body["error"]["message"]  # type: ignore[index]


def test_a_receiver_that_fails_is_retried_until_it_takes_the_result(stack, receiver) -> None:
    receiver.answers["flaky"] = [503, 500]
    request_id = submit(stack, {"text": "again"}, f"{receiver.url}/flaky")
    wait_for(lambda: delivered(stack, request_id), "the third attempt to be taken")
    state = webhook(stack, request_id)
    assert state.attempts == 3 and "HTTP 500" in state.last_error
    assert len({json.dumps(body) for body in receiver.bodies("flaky")}) == 1, "every attempt posts the same result"
    scrape = samples(stack)
    assert labelled(scrape, "ferry_webhook_failed_attempts_total") == {"status": 2}
    assert labelled(scrape, "ferry_webhook_deliveries_total") == {"delivered": 1}


def test_a_receiver_that_hangs_blocks_nothing_else(stack, receiver) -> None:
    receiver.hang.add("stuck")
    stuck = submit(stack, {"text": "x"}, f"{receiver.url}/stuck")
    with stack.client() as client:
        assert client.run("sample", {"text": "free"}, timeout=30) == {"text": "free"}
        running = client.submit("sample", {"steps": 400, "step_seconds": 0.05}, path="/slow")
        wait_for(lambda: running.status().state == "IN_PROGRESS", "it to start")
        running.cancel()
        wait_for(lambda: running.status().state in ("CANCELLED", "COMPLETED"), "the cancel to land")
    assert webhook(stack, stuck).state == inference_pb2.WEBHOOK_STATE_PENDING


@pytest.mark.parametrize(
    ("url", "code", "reason"),
    [
        ("http://10.0.0.1/hook", grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED"),
        ("data:text/plain,hi", grpc.StatusCode.PERMISSION_DENIED, "SCHEME_REFUSED"),
        ("ftp://example.com/hook", grpc.StatusCode.PERMISSION_DENIED, "SCHEME_REFUSED"),
        ("http://example.com/" + "a" * 3000, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_URL"),
    ],
    ids=["a private address", "a data URL", "another scheme", "a huge URL"],
)
def test_a_webhook_url_the_network_guard_refuses_is_refused_at_submit(
    start_ferry, url: str, code: grpc.StatusCode, reason: str
) -> None:
    stack = start_ferry("--app", APP, "--webhook-secret", SECRET)  # no --allow-private-networks
    with pytest.raises(ferry.FerryError) as refused, stack.client() as client:
        client.submit("sample", {"text": "x"}, webhook_url=url)
    assert (refused.value.code, refused.value.reason) == (code, reason)
    assert len(str(refused.value)) < 1200


def test_a_server_without_a_secret_refuses_webhooks_instead_of_sending_them_unsigned(start_ferry) -> None:
    stack = start_ferry("--app", APP)
    with stack.client() as client, pytest.raises(ferry.FerryError) as refused:
        client.submit("sample", {"text": "x"}, webhook_url="http://example.com/hook")
    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_WEBHOOK_SECRET")
