"""HTTP gateway benchmark: what the HTTP routes add over calling the gRPC `Run` path directly, same run.

    .venv/bin/python bench/gateway.py [--requests 300]

One `ferry serve --app bench/apps/queue_apps.py:NoOp` (an app that does nothing, so what is timed is
the path, not a handler). Three ways to run one request, turn about, request by request, so background
load hits all alike; each over one kept-alive connection, as a real client would keep it:

- gRPC `Run` through the SDK's stub: the baseline for
- the run host, `POST /run/ferry/noop` (httpx): one HTTP call mapped onto `Run`;
- the gRPC queue walk: `Submit`, `Stream` following the request to its end, `GetResult`: the baseline for
- the HTTP queue walk as the reference client makes it: `POST /queue/ferry/noop`, then
  `GET …/status/stream` until COMPLETED, then `GET …/requests/{id}` for the output.

Prints each HTTP path's p50 and p99 beside its gRPC twin's, the p50 difference (the goal: ≤ 2 ms), and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# bench/ holds queue.py, which would shadow the standard library's `queue` (which redis imports) if this
# script's folder stayed first on sys.path.
sys.path.append(sys.path.pop(0))

import httpx

from ferry.client import Client
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2

APP = f"{Path(__file__).resolve().parent / 'apps' / 'queue_apps.py'}:NoOp"


def percentile(times: list[float], fraction: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    arguments = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="ferry-bench-gateway-"))
    stack = StackProcess(["--data-dir", str(data), "--app", APP]).start()
    try:
        with Client(stack.grpc_address) as client, httpx.Client(base_url=stack.cdn_url, timeout=30) as http:
            stub = client.inference

            def grpc_run() -> object:
                return stub.Run(inference_pb2.RunRequest(app_id="noop", input_json="{}")).output_json

            def grpc_queue() -> object:
                request_id = stub.Submit(inference_pb2.SubmitRequest(app_id="noop", input_json="{}")).request_id
                for _ in stub.Stream(inference_pb2.StreamRequest(request_id=request_id)):
                    pass
                return stub.GetResult(inference_pb2.GetResultRequest(request_id=request_id)).output_json

            def http_run() -> object:
                answer = http.post("/run/ferry/noop", json={})
                answer.raise_for_status()
                return answer.json()

            def http_queue() -> object:
                urls = http.post("/queue/ferry/noop", json={}).json()
                with http.stream("GET", f"{urls['status_url']}/stream") as events:
                    for _ in events.iter_lines():
                        pass
                answer = http.get(urls["response_url"])
                answer.raise_for_status()
                return answer.json()

            paths: dict[str, Callable[[], object]] = {
                "gRPC Run": grpc_run,
                "POST /run": http_run,
                "gRPC queue": grpc_queue,
                "HTTP queue": http_queue,
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
    for name, twin in (("POST /run", "gRPC Run"), ("HTTP queue", "gRPC queue")):
        p50, base = statistics.median(times[name]), statistics.median(times[twin])
        print(
            f"{name:<10} p50 {p50 * 1000:6.2f} ms  p99 {percentile(times[name], 0.99) * 1000:6.2f} ms   "
            f"{twin:<10} p50 {base * 1000:6.2f} ms  p99 {percentile(times[twin], 0.99) * 1000:6.2f} ms   "
            f"added {(p50 - base) * 1000:+6.2f} ms   ratio {p50 / base:5.2f}   (goal: added ≤ 2 ms)"
        )


if __name__ == "__main__":
    main()
