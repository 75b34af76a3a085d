"""What `ferry serve` writes to its log while it runs requests: every line names its request, none holds a secret.

One stack with a token, JSON logs and S3 storage (moto over HTTP, so stored
files' URLs are presigned) runs a request of `log_app.LogApp` whose inputs come
from a real HTTP server: one URL with a password and a query-string secret,
downloaded by the runner, another fetched by the handler with an
`Authorization` header; both sources fail once, so the downloader logs its
retries. The handler stores an image and logs its presigned URL. Callers with a
wrong token are refused over gRPC and over HTTP. Then the stack's stderr is
read back. The formatter itself: tests/services/test_logs.py.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import grpc
import pytest
from aiohttp import web

import ferry
from ferry.testing import StackProcess
from ferry.v1 import downloader_pb2, downloader_pb2_grpc
from tests.conftest import AWS_TEST_CREDENTIALS
from tests.harness import HttpFileServer

LOG_APP = f"{Path(__file__).parent / 'log_app.py'}:LogApp"
TOKEN = "TOKENSECRET-3f9a"
WRONG_TOKEN = "WRONGTOKEN-77c1"
HEADER_VALUE = "Bearer HEADERSECRET-a1b2"
QUERY_SECRET = "QUERYSECRET-5e6f"
PASSWORD = "PASSWORDSECRET-9d0e"
JSON_FIELDS = {"time", "level", "logger", "message", "request_id"}


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"ferry-logs-{uuid.uuid4().hex[:12]}"
    credentials = {
        "aws_access_key_id": AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }
    boto3.client("s3", endpoint_url=s3_endpoint, **credentials).create_bucket(Bucket=name)
    return name


def failing_once(body: bytes) -> web.RequestHandler:
    """A source that answers 503 to its first request and `body` afterwards: the downloader logs a retry."""
    answered = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal answered
        answered += 1
        if answered == 1:
            return web.Response(status=503)
        return web.Response(body=body, content_type="application/octet-stream")

    return handler


@pytest.fixture
def sources(http_server: HttpFileServer) -> dict[str, str]:
    image = http_server.route("/in.png", failing_once(b"input bytes"))
    page = http_server.route("/page.bin", failing_once(b"page bytes"))
    with_password = image.replace("http://", f"http://alice:{PASSWORD}@", 1)
    return {"image_url": f"{with_password}?sig={QUERY_SECRET}", "page": page, "page_authorization": HEADER_VALUE}


def run_one(stack: StackProcess, arguments: dict[str, str]) -> tuple[str, dict[str, object]]:
    """The request's id and output."""
    with stack.client(token=TOKEN) as client:
        handle = client.submit("logs", arguments)
        return handle.request_id, handle.get(timeout=60)


def lines_of(stack: StackProcess) -> list[str]:
    return [line for line in stack.stop().splitlines() if line.strip()]


def test_a_json_log_names_each_request_and_holds_no_token_header_signature_or_url_secret(
    start_ferry, s3_endpoint, bucket, sources
):
    stack = start_ferry(
        *("--app", LOG_APP, "--token", TOKEN, "--log-format", "json", "--allow-private-networks"),
        *("--storage", f"s3://{bucket}/out", "--s3-endpoint-url", s3_endpoint, "--retry-backoff-seconds", "0.01"),
        env=AWS_TEST_CREDENTIALS,
    )
    request_id, output = run_one(stack, sources)
    stored_url = str(output["image"]["url"])  # type: ignore[index]
    [signature] = parse_qs(urlsplit(stored_url).query)["X-Amz-Signature"]
    with stack.client(token=WRONG_TOKEN) as stranger, pytest.raises(ferry.errors.Unauthenticated):
        stranger.submit("logs", sources)
    refused = urllib.request.Request(
        f"{stack.cdn_url}/queue/local/logs", data=b"{}", headers={"Authorization": f"Bearer {WRONG_TOKEN}"}
    )
    with pytest.raises(urllib.error.HTTPError) as http_refusal:
        urllib.request.urlopen(refused, timeout=30)
    assert http_refusal.value.code == 401

    lines = lines_of(stack)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(record.keys() >= JSON_FIELDS for record in records), lines
    ours = [record for record in records if record["request_id"] == request_id]
    assert {record["app"] for record in ours} == {"logs"}
    said = {(record["logger"], record["message"].split(" http")[0]) for record in ours}
    assert ("ferry.inference.apps.logs", "handler stored") in said  # context.log
    assert ("log_app", "plain logging stored") in said  # the handler's plain logging
    # The downloader did log the sources it retried: by scheme, host, port and path, each naming the request it
    # downloaded for (the runner's input download, and the handler's own).
    retries = {
        record["message"].split(" in ")[0]: record for record in records if record["message"].startswith("retrying ")
    }
    assert {re.sub(r":\d+/", ":PORT/", retried) for retried in retries} == {
        "retrying http://127.0.0.1:PORT/in.png",
        "retrying http://127.0.0.1:PORT/page.bin",
    }, retries
    assert [(record["request_id"], record.get("app")) for record in retries.values()] == [(request_id, "logs")] * 2
    written = "\n".join(lines)
    secrets = {TOKEN, WRONG_TOKEN, HEADER_VALUE.split()[1], QUERY_SECRET, PASSWORD, signature}
    assert not [secret for secret in secrets if secret in written], written


def test_the_default_text_log_names_the_request_of_a_handler_s_lines(start_ferry, s3_endpoint, bucket, sources):
    stack = start_ferry(
        *("--app", LOG_APP, "--token", TOKEN, "--allow-private-networks", "--retry-backoff-seconds", "0.01")
    )
    request_id, _ = run_one(stack, sources)
    lines = lines_of(stack)
    handler_lines = [line for line in lines if " ferry.inference.apps.logs: handler stored " in line]
    assert handler_lines and all(line.endswith(f" [request={request_id} app=logs]") for line in handler_lines), lines
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_a_download_names_the_request_its_caller_gave_only_in_the_shape_the_runner_makes(start_ferry, http_server):
    stack = start_ferry("--log-format", "json", "--allow-private-networks", "--retry-backoff-seconds", "0.01")
    named = http_server.route("/named.bin", failing_once(b"named"))
    forged = http_server.route("/forged.bin", failing_once(b"forged"))
    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = downloader_pb2_grpc.DownloaderServiceStub(channel)
        for url, request_id in ((named, "req-7f3a"), (forged, 'req-1 {"level": "ERROR"} ' + "x" * 4000)):
            metadata = (("x-ferry-request-id", request_id), ("x-ferry-app", "painter"))
            list(stub.Download(downloader_pb2.DownloadRequest(url=url, target_dir="named"), metadata=metadata))

    records = [json.loads(line) for line in lines_of(stack)]
    retried = {
        record["message"].split(" in ")[0].rsplit("/", 1)[1]: record
        for record in records
        if "retrying" in record["message"]
    }
    assert (retried["named.bin"]["request_id"], retried["named.bin"]["app"]) == ("req-7f3a", "painter")
    assert retried["forged.bin"]["request_id"] is None, "a value the runner would not make is ignored"
