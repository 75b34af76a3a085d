"""What metrics and tracing cost: the same paths on a stack with both on and one with both off, same run.

    .venv/bin/python bench/observability.py [--requests 40] [--downloads 300]

Two `ferry serve --app ferry.inference.apps.upscale:Upscaler` processes side by side:

- **on**: metrics on (the default) and tracing exporting every span (`OTEL_TRACES_EXPORTER=otlp`,
  OTLP over HTTP to a receiver in its own process that decodes nothing and answers 200; the default
  sampler, so every request is traced), the client tracing too: its calls carry a `traceparent`;
- **off**: `--no-metrics` (no RPC interceptor, no /metrics; the engines' counters still count, unread)
  and no `OTEL_*` variable, the client tracing nothing.

Two paths, each timed turn about, request by request, so background load hits both alike:

- the image→image app end to end: `client.run("upscaler", …)` of a 512×512 png from a local HTTP
  server (its own process), ×2, a 1024×1024 png stored on the local CDN;
- a cache-hit download: `client.download_file(url, target_dir)` of a file already in that folder —
  the shortest RPC the stack answers, where a fixed per-call cost shows most.

Prints each path's p50 with everything on and off, the difference and the ratio; the goal is a
difference ≤ 3 % or ≤ 0.3 ms, whichever is larger.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MIB, write_random_file
from PIL import Image

from ferry.client import Client
from ferry.testing import StackProcess

ROOT = Path(__file__).resolve().parents[1]
HTTP_SOURCE = ROOT / "scripts" / "http_source.py"
APP = "ferry.inference.apps.upscale:Upscaler"

# An OTLP/HTTP receiver that takes every export and keeps nothing: what is timed is the stack's side.
RECEIVER = """
import http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print("port", server.server_address[1], flush=True)
server.serve_forever()
"""


def started(command: list[str]) -> tuple[subprocess.Popen[str], int]:
    """A helper process that prints `port N` once listening."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline().split()[1])


@contextlib.contextmanager
def client_tracing(on: bool) -> Iterator[None]:
    """The client side of "on": a tracer provider of its own (spans dropped), so calls carry a traceparent."""
    if not on:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    with trace.get_tracer("bench").start_as_current_span("bench"):
        yield


def p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def report(case: str, on: list[float], off: list[float]) -> None:
    on_ms, off_ms = p50_ms(on), p50_ms(off)
    difference = on_ms - off_ms
    allowed = max(0.03 * off_ms, 0.3)
    verdict = "within" if difference <= allowed else "OVER"
    print(
        f"{case:<28} p50 on {on_ms:9.2f} ms   off {off_ms:9.2f} ms   difference {difference:+7.2f} ms   "
        f"ratio {on_ms / off_ms:6.3f}   ({verdict} the goal: ≤ {allowed:.2f} ms)",
        flush=True,
    )


def alternate(on: Callable[[], object], off: Callable[[], object], rounds: int, warmup: int) -> tuple[list, list]:
    for _ in range(warmup):
        on()
        off()
    times: tuple[list[float], list[float]] = ([], [])
    for turn in range(rounds):
        # Which side goes first swaps every round: neither always follows the other's work.
        order = ((on, times[0]), (off, times[1])) if turn % 2 == 0 else ((off, times[1]), (on, times[0]))
        for run, into in order:
            began = time.perf_counter()
            run()
            into.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="image→image requests per side")
    parser.add_argument("--downloads", type=int, default=300, help="cache-hit downloads per side")
    parser.add_argument(
        "--on",
        choices=["both", "metrics", "tracing", "none"],
        default="both",
        help="what the 'on' stack turns on ('none': both stacks off, the noise between two stacks)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-observability-"))
    source_dir = work / "source"
    source_dir.mkdir()
    Image.effect_noise((512, 512), 40).convert("RGB").save(source_dir / "input.png")
    write_random_file(source_dir / "weights.bin", MIB)
    receiver, receiver_port = started([sys.executable, "-c", RECEIVER])
    source, source_port = started([sys.executable, str(HTTP_SOURCE), str(source_dir)])
    common = ["--app", APP, "--allow-hosts", "127.0.0.1/32"]
    tracing_env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver_port}/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    tracing = args.on in ("both", "tracing")
    metrics_flag = [] if args.on in ("both", "metrics") else ["--no-metrics"]
    on_env = tracing_env if tracing else {}
    on_stack = StackProcess([*common, *metrics_flag, "--data-dir", str(work / "on")], env=on_env)
    off_stack = StackProcess([*common, "--data-dir", str(work / "off"), "--no-metrics"])
    try:
        image = {"image_url": f"http://127.0.0.1:{source_port}/input.png", "scale": 2}
        weights = f"http://127.0.0.1:{source_port}/weights.bin"

        def runs(client: Client) -> Callable[[], object]:
            return lambda: client.run("upscaler", image)

        def hits(client: Client, folder: Path) -> Callable[[], object]:
            return lambda: client.download_file(weights, folder)

        # The "off" client opens its channel before this process imports OpenTelemetry, so it passes no trace
        # context on; the "on" client opens its channel after, inside a span.
        with off_stack.start().client() as off:
            hits(off, work / "off-files")()
            with client_tracing(tracing), on_stack.start().client() as on:
                print(f"on: {args.on}; {args.requests} image→image runs, {args.downloads} cache-hit downloads a side")
                report("image→image end to end", *alternate(runs(on), runs(off), args.requests, warmup=3))
                report(
                    "cache-hit download",
                    *alternate(hits(on, work / "on-files"), hits(off, work / "off-files"), args.downloads, warmup=5),
                )
    finally:
        on_stack.stop()
        off_stack.stop()
        for process in (source, receiver):
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
