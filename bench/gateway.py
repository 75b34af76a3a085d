"""HTTP gateway benchmark: what the HTTP routes add over calling gRPC directly, same run.

    .venv/bin/python bench/gateway.py [--requests 300]

One `ferry serve --app bench/apps/queue_apps.py:NoOp` (an app that does nothing, so what is timed is
the path, not a handler). Every way to run one request below is taken turn about, request by request,
so background load hits all alike; each over one kept-alive connection, as a real client keeps it:

- gRPC `Run` through the SDK's stub: the baseline for the run host, `POST /run/ferry/noop`;
- the gRPC queue walk — `Submit`, `Stream` following the request to its end, `GetResult` — the baseline
  for the HTTP queue walk as the reference client makes it: `POST /queue/ferry/noop`, then
  `GET …/status/stream` until COMPLETED, then `GET …/requests/{id}` for the output.

Each HTTP path is timed with two clients: the standard library's `http.client` (plain HTTP/1.1: what
the server adds, little else) and httpx (what the reference client, fal-client, is built on). Prints
each one's p50 and p99 beside its gRPC twin's, the p50 difference (the goal: ≤ 2 ms) and the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ferry.client import Client
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2

APP = f"{Path(__file__).resolve().parent / 'apps' / 'queue_apps.py'}:NoOp"
JSON = {"Content-Type": "application/json"}


def percentile(times: list[float], fraction: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class PlainHttp:
    """One kept-alive HTTP/1.1 connection from the standard library: the lightest client Python has."""

    def __init__(self, base_url: str) -> None:
        self.connection = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=30)

    def call(self, method: str, url: str, body: bytes | None = None) -> bytes:
        self.connection.request(method, urlsplit(url).path or url, body=body, headers=JSON)
        answer = self.connection.getresponse()
        data = answer.read()  # a status stream: until the server ends it, after COMPLETED
        if answer.status >= 400:
            raise RuntimeError(f"{method} {url}: HTTP {answer.status}")
        return data

    def json(self, method: str, url: str, body: bytes | None = None) -> Any:
        return json.loads(self.call(method, url, body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    arguments = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="ferry-bench-gateway-"))
    stack = StackProcess(["--data-dir", str(data), "--app", APP]).start()
    try:
        with Client(stack.grpc_address) as client, httpx.Client(base_url=stack.cdn_url, timeout=30) as httpx_client:
            stub, plain = client.inference, PlainHttp(stack.cdn_url)

            def grpc_run() -> object:
                return stub.Run(inference_pb2.RunRequest(app_id="noop", input_json="{}")).output_json

            def grpc_queue() -> object:
                request_id = stub.Submit(inference_pb2.SubmitRequest(app_id="noop", input_json="{}")).request_id
                for _ in stub.Stream(inference_pb2.StreamRequest(request_id=request_id)):
                    pass
                return stub.GetResult(inference_pb2.GetResultRequest(request_id=request_id)).output_json

            def plain_run() -> object:
                return plain.json("POST", "/run/ferry/noop", b"{}")

            def plain_queue() -> object:
                urls = plain.json("POST", "/queue/ferry/noop", b"{}")
                plain.call("GET", f"{urls['status_url']}/stream")
                return plain.json("GET", urls["response_url"])

            def httpx_run() -> object:
                return httpx_client.post("/run/ferry/noop", json={}).raise_for_status().json()

            def httpx_queue() -> object:
                urls = httpx_client.post("/queue/ferry/noop", json={}).json()
                with httpx_client.stream("GET", f"{urls['status_url']}/stream") as events:
                    for _ in events.iter_lines():
                        pass
                return httpx_client.get(urls["response_url"]).raise_for_status().json()

            paths: dict[str, Callable[[], object]] = {
                "gRPC Run": grpc_run,
                "POST /run, http.client": plain_run,
                "POST /run, httpx": httpx_run,
                "gRPC queue walk": grpc_queue,
                "HTTP queue walk, http.client": plain_queue,
                "HTTP queue walk, httpx": httpx_queue,
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            for run in paths.values():  # warm-up: connections open, code paths hot
                for _ in range(10):
                    run()
            for _ in range(arguments.requests):
                for name, run in paths.items():
                    began = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - began)
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)
    print(f"{arguments.requests} requests each, turn about, no-op app")
    for name, twin in (
        ("POST /run, http.client", "gRPC Run"),
        ("POST /run, httpx", "gRPC Run"),
        ("HTTP queue walk, http.client", "gRPC queue walk"),
        ("HTTP queue walk, httpx", "gRPC queue walk"),
    ):
        p50, base = statistics.median(times[name]), statistics.median(times[twin])
        print(
            f"{name:<29} p50 {p50 * 1000:6.2f} ms  p99 {percentile(times[name], 0.99) * 1000:6.2f} ms   "
            f"{twin:<15} p50 {base * 1000:6.2f} ms  p99 {percentile(times[twin], 0.99) * 1000:6.2f} ms   "
            f"added {(p50 - base) * 1000:+6.2f} ms   ratio {p50 / base:5.2f}   (goal: added ≤ 2 ms)"
        )


if __name__ == "__main__":
    main()
