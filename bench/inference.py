"""Inference benchmark: the image→image app end to end against the same model in-process, same run.

    .venv/bin/python bench/inference.py [--requests 50] [--concurrent-total 128] [--clients 32]
                                        [--warmup 3] [--phases 20]

Prints one line per case: ferry's figure, the baseline's, and the ratio.
ferry runs `ferry serve --app ferry.inference.apps.upscale:Upscaler` in its
own process: one `client.run("upscaler", …)` downloads a 512×512 png from a
local HTTP server (its own process, sendfile), upscales it ×2, encodes the
1024×1024 png, stores it on the local CDN and answers with its URL. The
baseline calls the same functions in this process on the same file —
`load_image` → `upscale_tensor` → `to_pixels` → Pillow png (level 1, the
encoder's default) written to a file — so the difference is what ferry adds.
ferry's stored file is fsynced; the baseline's is not. Sequential latencies
alternate ferry and baseline request by request, so both see the same
background load.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ferry.client import Client
from ferry.events import Cancelled, Completed, Failed, InProgress
from ferry.inference.app import describe
from ferry.inference.apps import to_pixels
from ferry.inference.apps.upscale import MAX_OUTPUT_PIXELS, Upscaler, load_image, upscale_tensor
from ferry.testing import StackProcess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MIB

HTTP_SOURCE = Path(__file__).resolve().parent.parent / "scripts" / "http_source.py"
APP = "ferry.inference.apps.upscale:Upscaler"
SIZE, SCALE = 512, 2
PNG_LEVEL = 1  # the encoder's default png compress_level


def line(case: str, ferry: str, baseline_name: str, baseline: str, ratio: float | None, goal: str) -> None:
    shown = f"{ratio:6.3f}" if ratio is not None else "   n/a"
    print(f"{case:<34} ferry {ferry:>11}   {baseline_name:<31} {baseline:>11}   ratio {shown}   ({goal})", flush=True)


def photo_like(size: int) -> np.ndarray:
    """Smooth gradients plus sensor-like noise (fixed seed): what a photo costs to decode, upscale and encode."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    detail = np.random.default_rng(0).normal(0, 6, (size, size, 3))
    base = np.stack([np.sin(6 * x) * 0.5 + 0.5, y, (x + y) / 2], axis=-1) * 230
    return np.clip(base + detail, 0, 255).astype(np.uint8)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000


class InProcess:
    """The model the app runs, called directly: local png in, png file out."""

    def __init__(self, source: Path, out_dir: Path) -> None:
        self.source, self.out_dir = source, out_dir
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what Upscaler.setup picks

    def pixels(self) -> np.ndarray:
        image = load_image(self.source, self.device, max_pixels=MAX_OUTPUT_PIXELS // SCALE**2)
        with torch.inference_mode():
            return to_pixels(upscale_tensor(image, SCALE, 0.5)).cpu().numpy()  # 0.5: UpscaleInput's default sharpen

    def run(self, name: str = "out.png") -> None:
        Image.fromarray(self.pixels()).save(self.out_dir / name, compress_level=PNG_LEVEL)

    def phases(self) -> tuple[float, float, float]:
        """Seconds spent loading, upscaling, and converting + saving."""
        t0 = time.perf_counter()
        image = load_image(self.source, self.device, max_pixels=MAX_OUTPUT_PIXELS // SCALE**2)
        t1 = time.perf_counter()
        with torch.inference_mode():
            upscaled = upscale_tensor(image, SCALE, 0.5)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            Image.fromarray(to_pixels(upscaled).cpu().numpy()).save(
                self.out_dir / "phases.png", compress_level=PNG_LEVEL
            )
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def timed(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def ferry_phases(client: Client, arguments: dict[str, object]) -> tuple[float, float, float] | None:
    """Seconds from the call to the app's "upscaling" progress event, to its "encoding" event, to the result.

    The boundaries are the app's own progress messages, so this reads
    request + queue + download + decode, the model, and encode + store + URL +
    answer. None if the app stops reporting them.
    """
    marks: dict[str, float] = {}
    began = time.perf_counter()
    for event in client.stream("upscaler", arguments):
        if isinstance(event, InProgress) and event.progress is not None:
            marks.setdefault(event.progress.message, time.perf_counter())
        elif isinstance(event, Completed):
            marks["completed"] = time.perf_counter()
        elif isinstance(event, (Failed, Cancelled)):
            raise RuntimeError(f"request failed: {event.error}")
    if not {"upscaling", "encoding", "completed"} <= marks.keys():
        return None
    return marks["upscaling"] - began, marks["encoding"] - marks["upscaling"], marks["completed"] - marks["encoding"]


def hammer(
    clients: int, total: int, one_request: Callable[[int], Callable[[], object]]
) -> tuple[float, list[float], list[str]]:
    """`clients` threads share `total` requests; wall seconds, each request's latency, and the errors."""
    remaining = iter(range(total))
    take = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        request = one_request(index)  # per-thread setup (a Client) before the clock starts
        start.wait()
        while True:
            with take:
                if next(remaining, None) is None:
                    return
            began = time.perf_counter()
            try:
                request()
                latencies.append(time.perf_counter() - began)
            except Exception as error:  # noqa: BLE001 (counted, never raised: the run reports how many failed)
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, latencies, errors


def latency_cases(ferry_run: Callable[[], object], local: InProcess, requests: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        ferry_run()
        local.run()
    ferry_s: list[float] = []
    local_s: list[float] = []
    for _ in range(requests):  # interleaved, so background load falls on both alike
        ferry_s.append(timed(ferry_run))
        local_s.append(timed(local.run))
    print(
        f"sequential: {requests} requests each after {warmup} warm-up; overhead = ferry's percentile - the baseline's",
        flush=True,
    )
    for number, q in ((1, 50), (2, 99)):
        f, b = percentile_ms(ferry_s, q), percentile_ms(local_s, q)
        line(
            f"{number}. latency p{q}",
            f"{f:.1f} ms",
            "in-process + Pillow save",
            f"{b:.1f} ms",
            f / b,
            f"overhead {f - b:+.1f} ms",
        )
    return local_s


def phase_cases(client: Client, arguments: dict[str, object], local: InProcess, requests: int) -> None:
    ferry_parts: list[tuple[float, float, float] | None] = []
    local_parts: list[tuple[float, float, float]] = []
    for _ in range(requests):  # interleaved too
        ferry_parts.append(ferry_phases(client, arguments))
        local_parts.append(local.phases())
    print(
        f"phases: median of {requests}; ferry's boundaries are the app's progress events, seen by the client",
        flush=True,
    )
    measured = [part for part in ferry_parts if part is not None]
    if len(measured) < len(ferry_parts):
        print("   the app no longer reports 'upscaling' and 'encoding' progress: no ferry phases", flush=True)
        return
    names = (
        ("3. call+download+decode", "load_image (local file)"),
        ("3. model (upscale_tensor)", "upscale_tensor"),
        ("3. to_pixels+encode+store+answer", "to_pixels + Pillow save"),
    )
    for index, (case, baseline_name) in enumerate(names):
        f = float(np.median([part[index] for part in measured])) * 1000
        b = float(np.median([part[index] for part in local_parts])) * 1000
        line(case, f"{f:.1f} ms", baseline_name, f"{b:.1f} ms", f / b, f"overhead {f - b:+.1f} ms")


def throughput_cases(
    stack: StackProcess,
    arguments: dict[str, object],
    local: InProcess,
    clients: int,
    total: int,
    max_concurrency: int,
    sequential_rate: float,
) -> int:
    """Prints case 4 and returns how many requests failed."""
    opened: list[Client] = []

    def ferry_client(_: int) -> Callable[[], object]:
        own = stack.client()
        opened.append(own)
        return lambda: own.run("upscaler", arguments)

    ferry_wall, ferry_latencies, errors = hammer(clients, total, ferry_client)
    for own in opened:
        own.close()
    local_wall, _, local_errors = hammer(clients, total, lambda i: lambda: local.run(f"out-{i}.png"))
    ferry_rate, local_rate = total / ferry_wall, total / local_wall
    print(
        f"throughput: {clients} clients (threads, a Client each) share {total} requests; "
        f"the app runs {max_concurrency} at a time, the rest queue: "
        f"client-side latency p50 {percentile_ms(ferry_latencies, 50) / 1000:.2f} s, "
        f"p99 {percentile_ms(ferry_latencies, 99) / 1000:.2f} s",
        flush=True,
    )
    goal = f"errors {len(errors)} of {total}, must be 0"
    for baseline_name, rate in (
        (f"in-process, {clients} threads", local_rate),
        ("in-process, sequential (case 1)", sequential_rate),
    ):
        line(
            f"4. throughput, {clients} clients",
            f"{ferry_rate:.2f} req/s",
            baseline_name,
            f"{rate:.2f} req/s",
            ferry_rate / rate,
            goal,
        )
    for error in sorted(set(errors + local_errors))[:5]:
        print(f"   error: {error}", flush=True)
    return len(errors) + len(local_errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50, help="sequential requests per side for p50/p99")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per side first")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients for the throughput case")
    parser.add_argument("--concurrent-total", type=int, default=128, help="requests the concurrent clients share")
    parser.add_argument("--phases", type=int, default=20, help="requests timed phase by phase (0 = skip)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-inference-"))
    source_dir, local_dir = work / "source", work / "local"
    for folder in (source_dir, local_dir):
        folder.mkdir()
    source_png = source_dir / "input.png"
    Image.fromarray(photo_like(SIZE)).save(source_png)
    local = InProcess(source_png, local_dir)
    spec = describe(Upscaler)
    source = subprocess.Popen([sys.executable, str(HTTP_SOURCE), str(source_dir)], stdout=subprocess.PIPE, text=True)
    stack = StackProcess(["--app", APP, "--data-dir", str(work / "data"), "--allow-hosts", "127.0.0.1/32"])
    failures, stderr = 0, ""
    try:
        assert source.stdout is not None
        # The same URL every request: with no target_dir each request downloads into a fresh folder of its
        # own (the downloader dedupes by URL only within one folder), so no request is a cache hit.
        url = f"http://127.0.0.1:{source.stdout.readline().split()[1]}/{source_png.name}"
        arguments: dict[str, object] = {"image_url": url, "scale": SCALE}
        with stack.start().client() as client:
            print(
                f"app {spec.app_id}: machine_type {spec.machine_type}, max_concurrency {spec.max_concurrency}, "
                f"device {local.device.type}; input {SIZE}x{SIZE} png ({source_png.stat().st_size / MIB:.2f} MiB) "
                f"from {url} (same URL each time, downloaded each time), "
                f"scale {SCALE} -> {SIZE * SCALE}x{SIZE * SCALE} png",
                flush=True,
            )

            def ferry_run() -> dict[str, Any]:
                output: dict[str, Any] = client.run("upscaler", arguments)
                if output["image"]["width"] != SIZE * SCALE:
                    raise RuntimeError(f"unexpected output {output}")
                return output

            # The same model: ferry's stored png decodes to the pixels the baseline computes.
            with urllib.request.urlopen(ferry_run()["image"]["url"]) as response:
                served = np.array(Image.open(io.BytesIO(response.read())))
            difference = int(np.abs(served.astype(np.int16) - local.pixels().astype(np.int16)).max())
            print(f"ferry's output vs in-process pixels: max abs difference {difference}", flush=True)

            local_s = latency_cases(ferry_run, local, args.requests, args.warmup)
            if args.phases:
                phase_cases(client, arguments, local, args.phases)
            failures = throughput_cases(
                stack,
                arguments,
                local,
                args.clients,
                args.concurrent_total,
                spec.max_concurrency,
                len(local_s) / sum(local_s),
            )
    finally:
        stderr = stack.stop()
        source.terminate()
        source.wait()
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"FAILED: {failures} requests failed; server log tail:\n{stderr[-2000:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
