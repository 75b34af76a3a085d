"""Memory kept for speed is given back: after a burst of mixed load, an idle `ferry serve` shrinks back to
within 1.5x of the resident size it had before the load.

A few seconds of the load that once left a server at 3x its size for good: download streams of 32 MiB
files, concurrent 1024x1024 encodes and app runs, all at once, against a `ferry serve` subprocess.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from ferry.v1 import downloader_pb2
from tests.harness import HttpFileServer, wait_for

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
MIB = 1 << 20
STREAMS, ENCODES, RUNS = 16, 8, 2
ROUNDS = 3  # per worker


def resident_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def all_at_once(workers: list[Callable[[], None]], pid: int) -> float:
    """Run every worker on its own thread; return the server's peak resident MiB meanwhile."""
    failures: list[BaseException] = []

    def run(worker: Callable[[], None]) -> None:
        try:
            worker()
        except BaseException as error:  # noqa: BLE001 (reported by the test below)
            failures.append(error)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    peak = resident_mib(pid)
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, resident_mib(pid))
        threads[0].join(0.05)
    assert not failures, failures[0]
    return peak


@pytest.mark.timeout(300)
def test_an_idle_server_gives_back_what_a_burst_of_load_made_it_keep(start_ferry, http_server: HttpFileServer) -> None:
    urls = [
        http_server.add_file(f"source-{index}.bin", np.random.default_rng(index).bytes(32 * MIB)) for index in range(4)
    ]
    stack = start_ferry("--app", APP, "--allow-private-networks")
    pid = stack.process.pid
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    with stack.client() as warm:  # every kind of call once, so what loads lazily counts before the load
        list(warm.downloader.Download(downloader_pb2.DownloadRequest(url=urls[0], target_dir="warm")))
        warm.encode_tensor(image, "jpeg")
        warm.run("sample", {"size": 64}, path="/image")
    before = resident_mib(pid)

    def downloads(index: int) -> None:
        with stack.client() as client:
            for round_ in range(ROUNDS):
                url = urls[(index + round_) % len(urls)]
                list(
                    client.downloader.Download(
                        downloader_pb2.DownloadRequest(url=url, target_dir=f"d{index}", force=True)
                    )
                )

    def encodes(index: int) -> None:
        with stack.client() as client:
            for round_ in range(ROUNDS):
                client.encode_tensor(image, ("jpeg", "png", "webp")[(index + round_) % 3])

    def runs(_index: int) -> None:
        with stack.client() as client:
            for _ in range(ROUNDS):
                client.run("sample", {"size": 512}, path="/image")

    counts = ((downloads, STREAMS), (encodes, ENCODES), (runs, RUNS))
    workers = [partial(work, index) for work, count in counts for index in range(count)]
    peak = all_at_once(workers, pid)

    assert peak > 1.5 * before, (
        f"the load must make the server keep memory to test this ({before:.0f} -> {peak:.0f} MiB)"
    )
    shrunk = f"the server to shrink from {peak:.0f} MiB back to 1.5 x {before:.0f} MiB"
    wait_for(lambda: resident_mib(pid) <= 1.5 * before, shrunk, timeout=30)
