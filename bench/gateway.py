"""HTTP gateway benchmark: what the HTTP routes add over calling the gRPC `Run` path directly, same run.

    .venv/bin/python bench/gateway.py [--requests 300]

One `ferry serve --app bench/apps/queue_apps.py:NoOp` (an app that does nothing, so what is timed is
the path, not a handler). Three ways to run one request, turn about, request by request, so background
load hits all alike; each over one kept-alive connection, as a real client would keep it:

- gRPC `Run` through the SDK (`client.run`): the baseline;
- the run host, `POST /run/ferry/noop` (httpx): one HTTP call mapped onto `Run`;
- the queue path as the reference client walks it: `POST /queue/ferry/noop`, then
  `GET …/status/stream` until COMPLETED, then `GET …/requests/{id}` for the output.

Prints each HTTP path's p50 and p99, the gRPC path's, the p50 difference (the goal: ≤ 2 ms) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# bench/ holds queue.py, which would shadow the standard library's `queue` (which redis imports) if this
# script's folder stayed first on sys.path.
sys.path.append(sys.path.pop(0))

import httpx

from ferry.client import Client
from ferry.testing import StackProcess

APP = f"{Path(__file__).resolve().parent / 'apps' / 'queue_apps.py'}:NoOp"


def percentile(times: list[float], fraction: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    arguments = parser.parse_args()
    data = Path(sys.prefix).parent / ".bench-gateway-data"
    stack = StackProcess(["--data-dir", str(data), "--app", APP]).start()
    try:
        with Client(stack.grpc_address) as client, httpx.Client(base_url=stack.cdn_url, timeout=30) as http:

            def grpc_run() -> object:
                return client.run("noop", {})

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

            paths: dict[str, Callable[[], object]] = {"grpc Run": grpc_run, "POST /run": http_run, "queue": http_queue}
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
    base = statistics.median(times["grpc Run"])
    print(f"{arguments.requests} requests each, turn about, no-op app")
    for name in ("POST /run", "queue"):
        p50 = statistics.median(times[name])
        print(
            f"{name:<10} p50 {p50 * 1000:6.2f} ms  p99 {percentile(times[name], 0.99) * 1000:6.2f} ms   "
            f"grpc Run p50 {base * 1000:6.2f} ms  p99 {percentile(times['grpc Run'], 0.99) * 1000:6.2f} ms   "
            f"added {(p50 - base) * 1000:+6.2f} ms   ratio {p50 / base:5.2f}   (goal: added ≤ 2 ms)"
        )


if __name__ == "__main__":
    main()
