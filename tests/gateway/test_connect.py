"""Every unary and server-streaming RPC over the Connect protocol, on the HTTP server's port.

One `ferry serve` with a token hosts the sample app. `buf curl --protocol connect` (a Connect client
we did not write) calls it; raw HTTP shows the wire: binary bodies, envelopes, error JSON, and what
hostile requests get — each answered with a clear 4xx, the server serving on after it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from google.rpc import error_details_pb2

from ferry.testing import StackProcess
from ferry.v1 import downloader_pb2, inference_pb2
from tests.gateway.server_metrics import leave_a_slow_run

ROOT = Path(__file__).parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
TOKEN = "connect-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HELLO_DATA_URI = "data:text/plain;base64,aGVsbG8="  # "hello"
LARGEST_ENVELOPE = 0xFFFFFFFF  # the most a 4-byte length can declare: over any body cap a server can be given
# The body of a Run or Stream call whose request takes 20 s of steps: time for a client to leave it mid-way.
SLOW_RUN = json.dumps({"appId": "sample", "path": "/slow", "inputJson": '{"steps": 400, "step_seconds": 0.05}'})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    data = tmp_path_factory.mktemp("connect")
    with StackProcess(["--data-dir", str(data), "--app", APP, "--token", TOKEN]) as stack:
        yield stack


@pytest.fixture
def http(stack: StackProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.cdn_url, headers=BEARER, timeout=30) as client:
        yield client


def call_json(http: httpx.Client, procedure: str, body: object, **headers: str) -> httpx.Response:
    return http.post(
        f"/ferry.v1.{procedure}", content=json.dumps(body), headers={"Content-Type": "application/json", **headers}
    )


def envelopes(data: bytes) -> list[tuple[int, bytes]]:
    """A Connect response stream as (flags, message) pairs."""
    messages = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        messages.append((flags, data[5 : 5 + length]))
        data = data[5 + length :]
    return messages


def error_reason(error: dict) -> str:
    """The ErrorInfo reason a Connect error carries, read from its bytes (not its debug copy)."""
    [detail] = [d for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
    value = detail["value"]
    return error_details_pb2.ErrorInfo.FromString(base64.b64decode(value + "=" * (-len(value) % 4))).reason


def assert_still_serving(http: httpx.Client) -> None:
    response = call_json(http, "InferenceService/ListEndpoints", {})
    assert response.status_code == 200 and response.json()["apps"][0]["appId"] == "sample"


def buf_curl(stack: StackProcess, procedure: str, body: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "curl", "--protocol", "connect", "--schema", str(ROOT / "protos"),
         "-H", f"Authorization: Bearer {TOKEN}", "-d", json.dumps(body), f"{stack.cdn_url}/ferry.v1.{procedure}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


# -- a Connect client we did not write ---------------------------------------------------------


def test_buf_curl_lists_the_hosted_endpoints(stack: StackProcess) -> None:
    done = buf_curl(stack, "InferenceService/ListEndpoints", {})
    assert done.returncode == 0, done.stderr
    [app] = json.loads(done.stdout)["apps"]
    assert app["appId"] == "sample"
    assert {endpoint["path"] for endpoint in app["endpoints"]} >= {"/", "/slow"}


def test_buf_curl_streams_a_data_uri_downloads_events(stack: StackProcess) -> None:
    done = buf_curl(stack, "DownloaderService/Download", {"url": HELLO_DATA_URI})
    assert done.returncode == 0, done.stderr
    events = [json.loads(event) for event in done.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert "started" in events[0]
    assert events[-1]["completed"]["fileSize"] == "5"
    assert Path(events[-1]["completed"]["path"]).read_bytes() == b"hello"


def test_buf_curl_gets_not_found_for_an_unknown_request_id(stack: StackProcess) -> None:
    done = buf_curl(stack, "InferenceService/GetStatus", {"requestId": "no-such-request"})
    assert done.returncode != 0
    error = json.loads(done.stderr)
    assert error["code"] == "not_found"
    assert error_reason(error) == "UNKNOWN_REQUEST"


def test_buf_curl_gets_a_submitted_requests_status(stack: StackProcess, http: httpx.Client) -> None:
    submitted = call_json(http, "InferenceService/Submit", {"appId": "sample", "inputJson": '{"text": "hi"}'})
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["requestId"]
    done = buf_curl(stack, "InferenceService/GetStatus", {"requestId": request_id})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["requestId"] == request_id


# -- the wire ----------------------------------------------------------------------------------


def test_a_unary_call_takes_and_answers_binary_protobuf(http: httpx.Client) -> None:
    request = inference_pb2.RunRequest(app_id="sample", input_json='{"text": "ab", "times": 2}')
    response = http.post(
        "/ferry.v1.InferenceService/Run",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/proto"},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/proto"
    assert json.loads(inference_pb2.RunResponse.FromString(response.content).output_json) == {"text": "abab"}


def test_a_server_stream_arrives_as_envelopes_ending_in_an_end_stream_message(http: httpx.Client) -> None:
    request = downloader_pb2.DownloadRequest(url=HELLO_DATA_URI).SerializeToString()
    response = http.post(
        "/ferry.v1.DownloaderService/Download",
        content=struct.pack(">BI", 0, len(request)) + request,
        headers={"Content-Type": "application/connect+proto"},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/connect+proto"
    *messages, (end_flags, end) = envelopes(response.content)
    assert end_flags == 0x02 and json.loads(end) == {}
    events = [downloader_pb2.DownloadResponse.FromString(message) for flags, message in messages if flags == 0]
    assert len(events) == len(messages)
    assert events[0].HasField("started") and events[-1].completed.file_size == 5


def test_a_failed_stream_ends_with_the_error_in_its_end_stream_message(http: httpx.Client) -> None:
    body = json.dumps({"url": "data:no-comma"}).encode()
    response = http.post(
        "/ferry.v1.DownloaderService/Download",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers={"Content-Type": "application/connect+json"},
    )
    assert response.status_code == 200
    [(flags, end)] = envelopes(response.content)
    assert flags == 0x02
    error = json.loads(end)["error"]
    assert error["code"] == "invalid_argument" and error_reason(error) == "MALFORMED_DATA_URI"


def test_an_invalid_argument_answers_400_with_the_code_message_and_error_info(http: httpx.Client) -> None:
    response = call_json(
        http, "InferenceService/Run", {"appId": "sample", "path": "/refuse", "inputJson": '{"text": "zz"}'}
    )
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()
    assert error["code"] == "invalid_argument"
    assert "not a word this model knows" in error["message"]
    assert error_reason(error) == "UNKNOWN_WORD"


def test_connect_timeout_ms_is_the_calls_deadline(http: httpx.Client) -> None:
    slow = {"appId": "sample", "path": "/slow", "inputJson": '{"steps": 200, "step_seconds": 0.05}'}
    response = call_json(http, "InferenceService/Run", slow, **{"Connect-Timeout-Ms": "200"})
    assert response.status_code == 504
    assert response.json()["code"] == "deadline_exceeded"


# -- credentials: the gRPC server's token rules ------------------------------------------------


def test_a_call_without_credentials_is_unauthenticated(stack: StackProcess) -> None:
    with httpx.Client(base_url=stack.cdn_url, timeout=30) as anonymous:
        response = call_json(anonymous, "InferenceService/ListEndpoints", {})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("scheme", ["Bearer", "Key"])
def test_the_token_is_accepted_as_bearer_or_as_the_reference_clients_key(stack: StackProcess, scheme: str) -> None:
    with httpx.Client(base_url=stack.cdn_url, headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=30) as client:
        assert call_json(client, "InferenceService/ListEndpoints", {}).status_code == 200


def test_a_wrong_token_is_unauthenticated(stack: StackProcess) -> None:
    with httpx.Client(base_url=stack.cdn_url, headers={"Authorization": "Bearer wrong"}, timeout=30) as client:
        assert call_json(client, "InferenceService/ListEndpoints", {}).json()["code"] == "unauthenticated"


def test_a_token_that_is_not_ascii_is_unauthenticated_not_a_server_error(stack: StackProcess) -> None:
    # aiohttp reads the header's bytes as surrogates; as gRPC metadata they made every route answer 500.
    with httpx.Client(base_url=stack.cdn_url, headers={"Authorization": b"Bearer \xff\xfe"}, timeout=30) as client:
        connect = call_json(client, "InferenceService/ListEndpoints", {})
        queue = client.get("/queue/ferry/sample/requests/some-id/status")
    assert (connect.status_code, connect.json()["code"]) == (401, "unauthenticated")
    assert (queue.status_code, queue.json()["error_type"]) == (401, "BAD_TOKEN")


# -- hostile requests: a clear 4xx, and the server serves on -----------------------------------


def test_an_unknown_method_is_unimplemented_with_404(http: httpx.Client) -> None:
    response = call_json(http, "InferenceService/NoSuchMethod", {})
    assert response.status_code == 404
    assert response.json()["code"] == "unimplemented"
    assert_still_serving(http)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b'{"requestId": '), ("application/proto", b"\x0a\xff\xff")],
    ids=["json", "protobuf"],
)
def test_a_malformed_body_is_invalid_argument(http: httpx.Client, content_type: str, body: bytes) -> None:
    response = http.post("/ferry.v1.InferenceService/GetStatus", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert_still_serving(http)


def test_an_unknown_json_field_is_invalid_argument(http: httpx.Client) -> None:
    response = call_json(http, "InferenceService/GetStatus", {"requestIdd": "x"})
    assert response.status_code == 400
    assert "requestIdd" in response.json()["message"]


@pytest.mark.parametrize(
    ("procedure", "content_type"),
    [
        ("InferenceService/ListEndpoints", "application/json"),
        ("DownloaderService/Download", "application/connect+json"),
    ],
)
def test_a_body_that_is_not_the_content_encoding_it_names_is_invalid_argument(
    stack: StackProcess, http: httpx.Client, procedure: str, content_type: str
) -> None:
    # A connection of its own: aiohttp closes one whose body it could not decode, once it has answered.
    response = httpx.post(
        f"{stack.cdn_url}/ferry.v1.{procedure}",
        content=b"not gzip",
        headers={**BEARER, "Content-Type": content_type, "Content-Encoding": "gzip"},
    )
    if content_type == "application/json":
        assert (response.status_code, response.json()["code"]) == (400, "invalid_argument")
    else:  # a stream's error is its end-stream message, under a 200
        assert response.status_code == 200 and b'"invalid_argument"' in response.content
    assert_still_serving(http)


def test_get_on_a_procedure_is_405_with_a_json_error(http: httpx.Client) -> None:
    response = http.get("/ferry.v1.InferenceService/ListEndpoints")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["code"] == "unimplemented"


def test_a_content_type_that_is_no_connect_codec_is_415(http: httpx.Client) -> None:
    response = http.post(
        "/ferry.v1.InferenceService/ListEndpoints", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["code"] == "invalid_argument"


def test_a_client_streaming_method_is_unimplemented_over_connect(http: httpx.Client) -> None:
    body = json.dumps({"header": {"fileName": "a.txt"}}).encode()
    response = http.post(
        "/ferry.v1.EncoderService/Upload",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers={"Content-Type": "application/connect+json"},
    )
    [(flags, end)] = envelopes(response.content)
    assert flags == 0x02
    error = json.loads(end)["error"]
    assert error["code"] == "unimplemented" and "gRPC only" in error["message"]
    assert_still_serving(http)


async def exchange(stack: StackProcess, head: bytes, body_start: bytes, until: bytes) -> bytes:
    """Send a request's head and the start of its body, then read the answer up to `until` without sending the
    rest (a server that waits for the rest fails the test: it never answers)."""
    address = urlsplit(stack.cdn_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(head + body_start)
        await writer.drain()
        answer = b""
        while until not in answer and (more := await asyncio.wait_for(reader.read(65536), 10)):
            answer += more
        return answer
    finally:
        writer.close()


def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(stack: StackProcess, http: httpx.Client) -> None:
    head = (
        "POST /ferry.v1.InferenceService/GetStatus HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {1 << 40}\r\n\r\n"
    ).encode()
    answer = asyncio.run(exchange(stack, head, b'{"requestId": "', until=b"}"))
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 429 " in status_line
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["code"] == "resource_exhausted"
    assert_still_serving(http)


def test_an_envelope_declaring_a_message_over_the_cap_is_refused_before_it_arrives(
    stack: StackProcess, http: httpx.Client
) -> None:
    head = (
        "POST /ferry.v1.DownloaderService/Download HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    prefix = struct.pack(">BI", 0, LARGEST_ENVELOPE)
    answer = asyncio.run(exchange(stack, head, f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n", until=b"}}"))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"resource_exhausted"' in answer
    assert_still_serving(http)


def test_a_client_that_leaves_a_stream_cancels_its_call(stack: StackProcess, http: httpx.Client) -> None:
    request = (
        (
            "POST /ferry.v1.InferenceService/Stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {5 + len(SLOW_RUN)}\r\n\r\n"
        ).encode()
        + struct.pack(">BI", 0, len(SLOW_RUN))
        + SLOW_RUN.encode()
    )
    # Left mid-run, its events streaming: the server's own count of cancelled runs says it stopped.
    assert leave_a_slow_run(http, stack.cdn_url, request) == 1


def test_a_client_that_leaves_a_unary_call_cancels_it(stack: StackProcess, http: httpx.Client) -> None:
    request = (
        "POST /ferry.v1.InferenceService/Run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(SLOW_RUN)}\r\n\r\n{SLOW_RUN}"
    ).encode()
    # The server's own count of requests that ended cancelled (not a race against the 20 s the request would
    # take, which other requests of this module's stack could still be delaying).
    assert leave_a_slow_run(http, stack.cdn_url, request) == 1
