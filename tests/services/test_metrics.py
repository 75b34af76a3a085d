"""`/metrics` on the HTTP port: every RPC counted by service, method and code, timed, and tracked in flight;
each app's queue depth and slots; process metrics. Read back with prometheus-client's own parser."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

import ferry
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2
from tests.conftest import AWS_TEST_CREDENTIALS as AWS_TEST_ENV
from tests.harness import wait_for

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
PROBED_APP = f"{Path(__file__).parents[1] / 'inference' / 'media_app.py'}:ProbedApp"
TOKEN = "metrics-token"


def samples(stack: StackProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels; the scrape needs no token."""
    answer = httpx.get(f"{stack.cdn_url}/metrics")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def rpcs(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str, code: str) -> float:
    labels = (("code", code), ("method", method), ("service", "ferry.v1.InferenceService"))
    return scrape.get(("ferry_rpc_requests_total", labels), 0.0)


@pytest.fixture
def stack(start_ferry) -> StackProcess:  # type: ignore[no-untyped-def]
    return start_ferry("--app", APP, "--token", TOKEN)


def test_every_rpc_is_counted_by_its_code_and_timed(stack: StackProcess) -> None:
    before = samples(stack)
    with stack.client(token=TOKEN) as client:
        assert client.run("sample", {"text": "a"}) == {"text": "a"}
        assert client.run("sample", {"text": "b"}) == {"text": "b"}
        with pytest.raises(ferry.errors.InvalidArgument):
            client.run("sample", {"text": 5})
    with stack.client() as anonymous, pytest.raises(ferry.FerryError) as refused:
        anonymous.run("sample", {"text": "c"})
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    after = samples(stack)

    assert rpcs(after, "Run", "OK") - rpcs(before, "Run", "OK") == 2
    assert rpcs(after, "Run", "INVALID_ARGUMENT") - rpcs(before, "Run", "INVALID_ARGUMENT") == 1
    assert rpcs(after, "Run", "UNAUTHENTICATED") - rpcs(before, "Run", "UNAUTHENTICATED") == 1
    timed = (("method", "Run"), ("service", "ferry.v1.InferenceService"))
    assert (
        after[("ferry_rpc_duration_seconds_count", timed)] - before.get(("ferry_rpc_duration_seconds_count", timed), 0)
        == 4
    )
    assert after[("ferry_rpc_in_flight", timed)] == 0


def test_a_streamed_rpc_counts_once_it_has_ended(stack: StackProcess) -> None:
    with stack.client(token=TOKEN) as client:
        request = inference_pb2.StreamRequest(app_id="sample", path="/slow", input_json='{"steps": 2}')
        events = list(client.inference.Stream(request))
    assert events[-1].WhichOneof("event") == "completed"

    assert rpcs(samples(stack), "Stream", "OK") == 1


def test_queue_depth_and_slots_are_read_per_app_and_process_metrics_are_there(stack: StackProcess) -> None:
    with stack.client(token=TOKEN) as client:
        running = client.submit("sample", {"steps": 200, "step_seconds": 0.05}, path="/slow")
        queued = [client.submit("sample", {"text": str(n)}) for n in range(3)]
        while running.status().state != "IN_PROGRESS":
            time.sleep(0.01)
        scrape = samples(stack)
        running.cancel()
        for handle in queued:
            handle.cancel()

    assert scrape[("ferry_queue_depth", (("app", "sample"),))] == 3
    assert scrape[("ferry_app_slots_busy", (("app", "sample"),))] == 1
    assert scrape[("ferry_app_slots", (("app", "sample"),))] == 1
    assert scrape[("process_resident_memory_bytes", ())] > 0


def test_a_scrape_names_no_input_url_or_file(stack: StackProcess) -> None:
    secret_word = "do-not-leak-this-input"
    with stack.client(token=TOKEN) as client:
        client.run("sample", {"text": secret_word})
        with pytest.raises(ferry.FerryError):
            client.run("no-such-app", {"text": secret_word})

    assert secret_word not in httpx.get(f"{stack.cdn_url}/metrics").text


def download_samples(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["source"], dict(labels)["outcome"]): value
        for (name, labels), value in scrape.items()
        if name == "ferry_downloads_total"
    }


def test_downloads_are_counted_by_source_and_outcome_and_fetched_bytes_summed(start_ferry, http_server) -> None:  # type: ignore[no-untyped-def]
    stack = start_ferry("--allow-hosts", "127.0.0.1/32")
    url = http_server.add_file("weights.bin", b"w" * 5000)
    with stack.client() as client:
        client.download_file(url, "inputs")  # a miss
        client.download_file(url, "inputs")  # a hit
        client.download_file(url, "inputs", force=True)  # forced
        client.download_file("data:text/plain;base64,aGVsbG8=", "inputs")
        with pytest.raises(ferry.errors.PermissionDenied):
            client.download_file("http://169.254.169.254/latest/meta-data", "inputs")
    scrape = samples(stack)

    assert download_samples(scrape) == {
        ("http", "miss"): 1,
        ("http", "hit"): 1,
        ("http", "forced"): 1,
        ("data", "miss"): 1,
        ("http", "ADDRESS_BLOCKED"): 1,
    }
    assert scrape[("ferry_downloaded_bytes_total", (("source", "http"),))] == 10_000  # the miss and the forced one
    assert scrape[("ferry_downloads_active", ())] == 0


def labelled(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[str, float]:
    """A one-label metric's samples, by that label's value."""
    return {labels[0][1]: value for (sample, labels), value in scrape.items() if sample == name and len(labels) == 1}


def test_encodes_and_storage_are_counted_and_a_fallback_names_the_backend_that_failed(
    start_ferry,
    aws_test_credentials,
    dead_address: str,  # type: ignore[no-untyped-def]
) -> None:
    down = "s3://ferry-down/outputs"
    stack = start_ferry(
        *("--storage", down, "--storage", "local", "--storage-attempts", "1"),
        *("--s3-endpoint-url", f"http://{dead_address}", "--s3-region", "us-east-1"),
        env=dict(AWS_TEST_ENV),
    )
    image = np.zeros((16, 16, 3), np.uint8)
    with stack.client() as client:
        client.encode_tensor(image, "png")
        client.encode_tensor(image, "jpeg")
        (video,) = client.encode_tensor(np.zeros((4, 16, 16, 3), np.uint8), "mp4", fps=8)
        with pytest.raises(ferry.errors.InvalidArgument):
            client.encode_tensor(np.full((16, 16, 3), np.nan, np.float32), "png")
    scrape = samples(stack)

    encodes = {
        (dict(labels)["format"], dict(labels)["outcome"]): value
        for (name, labels), value in scrape.items()
        if name == "ferry_encodes_total"
    }
    assert encodes == {("png", "ok"): 1, ("jpeg", "ok"): 1, ("mp4", "ok"): 1, ("png", "NON_FINITE"): 1}
    assert labelled(scrape, "ferry_encode_duration_seconds_count") == {"png": 1, "jpeg": 1, "mp4": 1}
    assert labelled(scrape, "ferry_encode_input_bytes_total") == {"png": 768, "jpeg": 768, "mp4": 4 * 768}
    assert labelled(scrape, "ferry_stored_objects_total") == {"local": 3}
    assert labelled(scrape, "ferry_stored_bytes_total")["local"] == sum(
        labelled(scrape, "ferry_encoded_bytes_total").values()
    )
    assert labelled(scrape, "ferry_storage_fallbacks_total") == {down: 3}
    assert labelled(scrape, "ferry_storage_failed_attempts_total")[down] >= 1
    assert video.url.startswith(stack.cdn_url)


def test_app_requests_are_counted_by_endpoint_and_outcome_and_timed(stack: StackProcess) -> None:
    with stack.client(token=TOKEN) as client:
        client.run("sample", {"text": "a"})
        with pytest.raises(ferry.errors.Internal):
            client.run("sample", {"text": "a"}, path="/fail")
        with pytest.raises(ferry.errors.InvalidArgument):
            client.run("sample", {"text": "a"}, path="/refuse")
        slow = client.submit("sample", {"steps": 400, "step_seconds": 0.05}, path="/slow")
        while slow.status().state != "IN_PROGRESS":
            time.sleep(0.01)
        slow.cancel()
        scrape = samples(stack)
        while (
            "ferry_requests_total",
            (("app", "sample"), ("endpoint", "/slow"), ("outcome", "CANCELLED")),
        ) not in scrape:
            scrape = samples(stack)  # the replica hears the cancel within 0.5 s

    outcomes = {
        (dict(labels)["endpoint"], dict(labels)["outcome"]): value
        for (name, labels), value in scrape.items()
        if name == "ferry_requests_total"
    }
    assert outcomes == {
        ("/", "OK"): 1,
        ("/fail", "INTERNAL"): 1,
        ("/refuse", "INVALID_ARGUMENT"): 1,
        ("/slow", "CANCELLED"): 1,
    }
    waits = {
        dict(labels)["endpoint"]: value
        for (name, labels), value in scrape.items()
        if name == "ferry_queue_wait_seconds_count" and dict(labels)["app"] == "sample"
    }
    assert waits == {"/": 1, "/fail": 1, "/refuse": 1, "/slow": 1}, "each run's wait, observed once when taken"
    assert (
        scrape[
            (
                "ferry_request_run_seconds_count",
                (
                    ("app", "sample"),
                    ("endpoint", "/"),
                ),
            )
        ]
        == 1
    )


def test_a_stack_without_a_cdn_serves_metrics_on_a_port_of_its_own(start_ferry) -> None:  # type: ignore[no-untyped-def]
    stack = start_ferry("inference", "--app", APP, "--metrics-port", "0")
    assert stack.cdn_url == "" and stack.metrics_url.endswith("/metrics")
    with stack.client() as client:
        client.run("sample", {"text": "a"})
    scrape = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(stack.metrics_url).text)
        for sample in family.samples
    }

    assert rpcs(scrape, "Run", "OK") == 1
    assert scrape[("ferry_queue_depth", (("app", "sample"),))] == 0
    assert httpx.get(stack.metrics_url.removesuffix("/metrics") + "/playground").status_code == 404  # metrics alone


def test_a_metrics_port_already_taken_is_one_line_and_exit_1(tmp_path: Path, dead_address: str) -> None:
    port = dead_address.rsplit(":", 1)[1]  # bound by the test, so taken
    serve = [sys.executable, "-m", "ferry.cli", "serve", "inference", "--data-dir", str(tmp_path), "--grpc-port", "0"]
    done = subprocess.run(
        [*serve, "--metrics-port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "for metrics" in done.stderr


def test_no_metrics_serves_no_metrics_and_cannot_be_given_a_metrics_port(start_ferry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stack = start_ferry("--app", APP, "--no-metrics")
    with stack.client() as client:
        assert client.run("sample", {"text": "a"}) == {"text": "a"}
    assert httpx.get(f"{stack.cdn_url}/metrics").status_code == 404
    serve = [sys.executable, "-m", "ferry.cli", "serve", "--data-dir", str(tmp_path), "--grpc-port", "0"]
    both = subprocess.run([*serve, "--no-metrics", "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert both.returncode != 0 and "--no-metrics" in both.stderr


BODY = bytes(range(256)) * 8  # 2048 bytes


async def cut_once_then_whole(request: web.Request, cut: list[str], *, resumable: bool) -> web.StreamResponse:
    """The whole body, except that the first GET drops the connection halfway; Range requests get the rest."""
    if cut or "Range" in request.headers:
        if "Range" in request.headers:
            start = int(request.headers["Range"].removeprefix("bytes=").removesuffix("-"))
            headers = {"Content-Range": f"bytes {start}-{len(BODY) - 1}/{len(BODY)}", "ETag": '"v1"'}
            return web.Response(status=206, body=BODY[start:], headers=headers)
        return web.Response(body=BODY)
    cut.append("cut")
    headers = {"Accept-Ranges": "bytes", "ETag": '"v1"'} if resumable else {}
    response = web.StreamResponse(headers=headers)
    response.content_length = len(BODY)
    await response.prepare(request)
    await response.write(BODY[: len(BODY) // 2])
    assert request.transport is not None
    request.transport.close()  # the connection drops mid-body
    return response


def test_retries_are_counted_by_cause_resumes_by_outcome_and_the_cache_by_size_and_evictions(
    start_ferry,  # type: ignore[no-untyped-def]
    http_server,
) -> None:
    stack = start_ferry("--allow-hosts", "127.0.0.1/32", "--cache-budget-mib", "1")
    answers = [
        web.Response(status=503, headers={"Retry-After": "0"}),
        web.Response(status=429, headers={"Retry-After": "0"}),
    ]

    async def flaky(_request: web.Request) -> web.Response:
        return answers.pop(0) if answers else web.Response(body=b"finally")

    resumed: list[str] = []
    restarted: list[str] = []

    async def resumable(request: web.Request) -> web.StreamResponse:
        return await cut_once_then_whole(request, resumed, resumable=True)

    async def not_resumable(request: web.Request) -> web.StreamResponse:
        return await cut_once_then_whole(request, restarted, resumable=False)

    with stack.client() as client:
        client.download_file(http_server.route("/flaky.bin", flaky), "inputs")
        client.download_file(http_server.route("/resume.bin", resumable), "inputs")
        client.download_file(http_server.route("/restart.bin", not_resumable), "inputs")
        assert samples(stack)[("ferry_download_cache_bytes", ())] == 7 + 2 * len(BODY)
        client.download_file(http_server.add_file("old.bin", b"o" * 700_000), "inputs")
        client.download_file(http_server.add_file("new.bin", b"n" * 700_000), "inputs")  # 1.4 MB > the 1 MiB budget
    scrape = wait_for(
        lambda: (got := samples(stack))[("ferry_download_cache_evictions_total", ())] == 4 and got,
        "eviction, which runs after the download returns",
    )

    assert labelled(scrape, "ferry_download_retries_total") == {"http_503": 1, "http_429": 1, "cut_short": 2}
    assert labelled(scrape, "ferry_download_resumes_total") == {"resumed": 1, "restarted": 1}
    assert scrape[("ferry_download_cache_evicted_bytes_total", ())] == 7 + 2 * len(BODY) + 700_000  # oldest first
    assert scrape[("ferry_download_cache_files", ())] == 1
    assert scrape[("ferry_download_cache_bytes", ())] == 700_000


def test_failed_health_probes_are_counted_by_app_and_cause(start_ferry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flag = tmp_path / "unhealthy"
    flag.touch()
    stack = start_ferry("--app", PROBED_APP, env={"FERRY_TEST_UNHEALTHY_FLAG": str(flag)})
    scrape = wait_for(
        lambda: (
            (got := samples(stack)).get(("ferry_health_probe_failures_total", (("app", "probed"), ("cause", "error"))))
            and got
        ),
        "a failed probe to be counted",
    )

    failures = {
        labels: value for (name, labels), value in scrape.items() if name == "ferry_health_probe_failures_total"
    }
    assert list(failures) == [(("app", "probed"), ("cause", "error"))], "a probe that raised, nothing else"
