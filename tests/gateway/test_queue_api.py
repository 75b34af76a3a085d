"""The reference platform's queue and run APIs over HTTP, driven by that platform's own published client.

One `ferry serve` over TLS with a token hosts the sample app; `fal_client` reaches it with only its host
settings changed (`FAL_QUEUE_RUN_HOST=127.0.0.1:PORT/queue`, `FAL_RUN_HOST=127.0.0.1:PORT/run`), its
key set to the server's token and the test CA trusted. What only raw HTTP shows (the status stream,
`Bearer`, the submit headers) is asked with httpx.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferry.testing import StackProcess
from tests.certificates import write_self_signed
from tests.gateway.server_metrics import leave_a_slow_run, metric

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
TOKEN = "gateway-test-token"
CALLS = Path(__file__).with_name("fal_client_calls.py")


class Gateway:
    def __init__(self, stack: StackProcess, ca_file: Path) -> None:
        self.stack, self.ca_file = stack, ca_file
        self.host = stack.cdn_url.removeprefix("https://")

    def fal(self, scenario: str, key: str = TOKEN) -> dict[str, Any]:
        """What `fal_client` saw in `scenario` (fal_client_calls.py), run in its own process."""
        env = {
            **os.environ,
            "FAL_KEY": key,
            "FAL_QUEUE_RUN_HOST": f"{self.host}/queue",
            "FAL_RUN_HOST": f"{self.host}/run",
            "SSL_CERT_FILE": str(self.ca_file),
        }
        done = subprocess.run(
            [sys.executable, str(CALLS), scenario], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def http(self, authorization: str | None = f"Key {TOKEN}") -> httpx.Client:
        headers = {"Authorization": authorization} if authorization else {}
        verify = ssl.create_default_context(cafile=self.ca_file)
        return httpx.Client(base_url=self.stack.cdn_url, verify=verify, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gateway")
    cert, key = write_self_signed(folder)
    stack = StackProcess(
        [
            "--data-dir",
            str(folder / "data"),
            "--app",
            APP,
            "--token",
            TOKEN,
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ]
    ).start()
    yield Gateway(stack, cert)
    stack.stop()


# -- the reference client, unchanged ------------------------------------------------------------


def test_submit_then_status_events_and_result_as_the_client_reads_them(gateway: Gateway) -> None:
    seen = gateway.fal("submit_and_follow")

    kinds = [event["kind"] for event in seen["events"]]
    assert kinds[-1] == "Completed" and set(kinds) <= {"Queued", "InProgress", "Completed"}
    final = seen["final"]
    assert final["kind"] == "Completed" and final["error"] is None
    assert [log["message"] for log in final["logs"]] == ["step 1", "step 2", "step 3"]
    assert seen["result"] == seen["result_again"] == {"finished_steps": 3}


def test_subscribe_reports_queue_updates_with_logs_then_returns_the_output(gateway: Gateway) -> None:
    seen = gateway.fal("subscribe")

    assert seen["result"] == {"finished_steps": 2}
    assert len(seen["enqueued"]) == 1
    assert seen["updates"][-1]["kind"] == "Completed"
    assert any(log["message"] == "step 2" for log in seen["updates"][-1]["logs"])


def test_run_on_the_run_host_returns_the_output_of_the_endpoint_at_the_path(gateway: Gateway) -> None:
    assert gateway.fal("run") == {"root": {"text": "hihi"}, "path": {"text": "HI"}}


def test_cancel_stops_a_running_request_and_its_result_says_cancelled(gateway: Gateway) -> None:
    seen = gateway.fal("cancel")

    assert seen["final"]["kind"] == "Completed" and seen["final"]["error_type"] == "CANCELLED"
    assert seen["result"]["status"] == 400 and seen["result"]["error_type"] == "CANCELLED"
    assert seen["cancel_again"]["status"] == 400  # already completed


def test_bad_input_is_refused_422_naming_the_field_and_an_unknown_app_404(gateway: Gateway) -> None:
    seen = gateway.fal("bad_input")

    assert seen["run"]["status"] == 422 and seen["run"]["error_type"] == "INVALID_INPUT"
    assert "text" in seen["run"]["message"]
    assert seen["submit"]["status"] == 422 and "txt" in seen["submit"]["message"]  # refused at submit, not queued
    assert seen["unknown_app"]["status"] == 404 and seen["unknown_app"]["error_type"] == "UNKNOWN_APP"


def test_a_handler_that_fails_completes_with_its_error_and_its_result_is_a_500(gateway: Gateway) -> None:
    seen = gateway.fal("failing_handler")

    assert seen["final"]["kind"] == "Completed" and "model exploded" in seen["final"]["error"]
    assert seen["result"]["status"] == 500


def test_a_wrong_key_is_refused_401(gateway: Gateway) -> None:
    seen = gateway.fal("bad_input", key="not-the-token")

    assert {seen[call]["status"] for call in ("run", "submit", "unknown_app")} == {401}


# -- raw HTTP -------------------------------------------------------------------------------------


def test_a_bearer_token_is_accepted_as_well_as_key_and_none_is_refused(gateway: Gateway) -> None:
    with gateway.http(f"Bearer {TOKEN}") as bearer, gateway.http(None) as anonymous:
        assert bearer.post("/run/ferry/sample", json={"text": "a"}).json() == {"text": "a"}
        refused = anonymous.post("/run/ferry/sample", json={"text": "a"})
    assert refused.status_code == 401 and refused.json()["error_type"] == "BAD_TOKEN"


def test_submit_answers_urls_on_the_callers_host_and_the_request_id_header(gateway: Gateway) -> None:
    with gateway.http() as http:
        answer = http.post("/queue/anyone/sample", json={"text": "a"})
    body = answer.json()

    request_id = body["request_id"]
    base = f"{gateway.stack.cdn_url}/queue/anyone/sample/requests/{request_id}"
    assert (body["response_url"], body["status_url"], body["cancel_url"]) == (base, f"{base}/status", f"{base}/cancel")
    assert answer.headers["X-Fal-Request-Id"] == request_id


def test_the_status_stream_sends_server_sent_events_until_completed(gateway: Gateway) -> None:
    with gateway.http() as http:
        request_id = http.post("/queue/ferry/sample/slow", json={"steps": 3, "step_seconds": 0.05}).json()["request_id"]
        url = f"/queue/ferry/sample/requests/{request_id}/status/stream?logs=1"
        with http.stream("GET", url) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    documents = [json.loads(line.removeprefix("data: ")) for line in lines]

    assert documents[-1]["status"] == "COMPLETED" and "error" not in documents[-1]
    progress = [document["progress"]["current"] for document in documents if "progress" in document]
    assert progress and progress == sorted(progress) and progress[-1] <= 3  # the handler's own progress, in order
    assert [log["message"] for log in documents[-1]["logs"]] == ["step 1", "step 2", "step 3"]
    assert {document["status"] for document in documents[:-1]} <= {"IN_QUEUE", "IN_PROGRESS"}


@pytest.mark.parametrize(
    ("headers", "error_type"),
    [
        ({"X-Fal-Queue-Priority": "urgent"}, "BAD_PRIORITY"),
        ({"X-Fal-Request-Timeout": "soon"}, "BAD_START_TIMEOUT"),
        ({"X-Fal-Request-Timeout": "-3"}, "BAD_START_TIMEOUT"),
        ({"X-Fal-Object-Lifecycle-Preference": "{}"}, "BAD_LIFECYCLE"),
        ({"X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 0}'}, "INVALID_EXPIRY"),
        ({"X-Fal-Object-Lifecycle-Preference": "[" * 4000}, "BAD_LIFECYCLE"),  # nesting json would recurse into
        # Past uint64 (the Lifecycle field's type): was a 500.
        ({"X-Fal-Object-Lifecycle-Preference": f'{{"expiration_duration_seconds": {2**70}}}'}, "INVALID_EXPIRY"),
    ],
)
def test_submit_options_that_make_no_sense_are_refused_422(
    gateway: Gateway, headers: dict[str, str], error_type: str
) -> None:
    with gateway.http() as http:
        refused = http.post("/queue/ferry/sample", json={"text": "a"}, headers=headers)

    assert (refused.status_code, refused.json()["error_type"]) == (422, error_type)


def test_a_low_priority_submit_with_a_start_timeout_and_lifecycle_is_queued_and_runs(gateway: Gateway) -> None:
    headers = {
        "X-Fal-Queue-Priority": "low",
        "X-Fal-Request-Timeout": "60",
        "X-Fal-Object-Lifecycle-Preference": '{"expiration_duration_seconds": 600}',
    }
    with gateway.http() as http:
        request_id = http.post("/queue/ferry/sample/image", json={"size": 16}, headers=headers).json()["request_id"]
        status = http.get(f"/queue/ferry/sample/requests/{request_id}/status/stream").text
        result = http.get(f"/queue/ferry/sample/requests/{request_id}").json()

    assert '"COMPLETED"' in status, status
    assert "image" in result, (status, result)
    assert result["image"]["content_type"] == "image/png"


def test_a_body_that_is_not_utf8_is_refused_422_and_one_over_the_cap_413(gateway: Gateway) -> None:
    with gateway.http() as http:
        not_utf8 = http.post("/queue/ferry/sample", content=b'{"text": "\xff"}')
        # Over the gRPC server's largest message (4 MiB + room for the biggest data: URI input).
        too_large = http.post("/run/ferry/sample", content=b" " * (64 << 20))
        still_serving = http.post("/run/ferry/sample", json={"text": "ok"})

    assert (not_utf8.status_code, not_utf8.json()["error_type"]) == (422, "INVALID_JSON")
    assert (too_large.status_code, too_large.json()["error_type"]) == (413, "BODY_TOO_LARGE")
    assert still_serving.json() == {"text": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json; charset=no-such-charset"},  # was a LookupError: a 500
        {"Content-Encoding": "gzip"},  # a body that is not gzip: was a 500
    ],
)
def test_a_body_with_an_unknown_charset_or_a_false_content_encoding_is_refused_422(
    gateway: Gateway, headers: dict[str, str]
) -> None:
    with gateway.http() as http:  # a connection of its own: aiohttp closes one whose body it could not decode
        refused = http.post("/run/ferry/sample", content=b'{"text": "a"}', headers=headers)
    with gateway.http() as http:
        still_serving = http.post("/run/ferry/sample", json={"text": "ok"})

    if "charset" in headers.get("Content-Type", ""):  # JSON is UTF-8 whatever the header says
        assert refused.json() == {"text": "a"}
    else:
        assert (refused.status_code, refused.json()["error_type"]) == (422, "UNREADABLE_BODY")
    assert still_serving.json() == {"text": "ok"}


def test_a_client_that_leaves_a_run_cancels_it(gateway: Gateway) -> None:
    body = json.dumps({"steps": 400, "step_seconds": 0.05})
    request = (
        f"POST /run/ferry/sample/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Key {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    tls = ssl.create_default_context(cafile=gateway.ca_file)
    with gateway.http() as http:
        assert leave_a_slow_run(http, gateway.stack.cdn_url, request, tls) == 1


def test_unknown_request_ids_are_404_and_the_result_of_a_running_request_is_400(gateway: Gateway) -> None:
    with gateway.http() as http:
        unknown = http.get("/queue/ferry/sample/requests/no-such-request/status")
        running = http.post("/queue/ferry/sample/slow", json={"steps": 100, "step_seconds": 0.05}).json()
        early = http.get(running["response_url"])
        http.put(running["cancel_url"])

    assert (unknown.status_code, unknown.json()["error_type"]) == (404, "UNKNOWN_REQUEST")
    assert (early.status_code, early.json()["error_type"]) == (400, "NOT_COMPLETED")


def in_flight_streams(http: httpx.Client) -> float:
    """Stream RPCs the server is answering now, from its own metrics."""
    return metric(http, 'ferry_rpc_in_flight{method="Stream",service="ferry.v1.InferenceService"}')


def test_leaving_the_status_stream_of_a_quiet_request_stops_following_it_at_once(gateway: Gateway) -> None:
    with gateway.http() as http:
        running = http.post("/queue/ferry/sample/slow", json={"steps": 400, "step_seconds": 0.05}).json()
        queued = http.post("/queue/ferry/sample", json={"text": "waits"}).json()  # behind it: no news for a while
        with http.stream("GET", f"{queued['status_url']}/stream") as events:
            first = next(events.iter_lines())
            assert "IN_QUEUE" in first and in_flight_streams(http) == 1
        deadline = time.monotonic() + 5
        while in_flight_streams(http) and time.monotonic() < deadline:
            time.sleep(0.05)
        followed_after = in_flight_streams(http)
        for request in (queued, running):
            http.put(request["cancel_url"])

    assert followed_after == 0
