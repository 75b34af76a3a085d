"""The downloader across process faults: a killed server, replicas sharing a data dir, a drain on SIGTERM.

Each test runs real `ferry serve` subprocesses against a real HTTP source on
loopback, so the process boundary, file locks and signals are the ones
production has.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

import ferry
from ferry.sizes import MIB
from tests.harness import wait_for

KIB = 1 << 10
PART_GLOB = ".*.ferry-part"


def _body(size: int) -> bytes:
    """Distinct bytes per position block, so a reordered or truncated copy never compares equal."""
    return b"".join(i.to_bytes(4, "big") * (KIB // 4) for i in range(size // KIB))[:size]


def _trickle(body: bytes, piece: int = 64 * KIB, interval: float = 0.05) -> Callable[[web.Request], Any]:
    """A source that sends `body` slowly: Content-Length up front, no Accept-Ranges (no resume)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(body))})
        response = web.StreamResponse(
            headers={"Content-Length": str(len(body)), "Content-Type": "application/octet-stream"}
        )
        await response.prepare(request)
        try:
            for start in range(0, len(body), piece):
                await response.write(body[start : start + piece])
                await asyncio.sleep(interval)
        except ConnectionError:
            pass  # the downloader went away (killed): stop sending
        return response

    return handler


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob(PART_GLOB)) if folder.exists() else []


def _visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


class Background:
    """`download_file` on a thread; `outcome()` is its path or the FerryError it raised."""

    def __init__(self, address: str, url: str, **kwargs: Any) -> None:
        self._result: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(address, url, kwargs), daemon=True)
        self._thread.start()

    def _run(self, address: str, url: str, kwargs: dict[str, Any]) -> None:
        with ferry.Client(address) as client:
            try:
                self._result.append(client.download_file(url, **kwargs))
            except ferry.FerryError as error:
                self._result.append(error)

    def outcome(self, timeout: float = 30) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the download call did not return"
        return self._result[0]


@pytest.mark.timeout(60)
def test_sigkill_mid_download_leaves_no_file_and_a_restart_sweeps_the_stale_part(start_ferry, http_server, tmp_path):
    data = tmp_path / "shared-data"
    serve_args = ("downloader", "--data-dir", str(data), "--allow-private-networks")
    stack = start_ferry(*serve_args)
    slow_url = http_server.route("/slow.bin", _trickle(_body(8 * MIB)))  # ~6 s to send in full
    folder = data / "in"

    download = Background(stack.grpc_address, slow_url, target_dir="in")
    wait_for(lambda: http_server.gets("/slow.bin") and _parts(folder), "the transfer to start writing a part file")

    stack.process.kill()
    stack.process.wait(10)
    error = download.outcome()
    assert isinstance(error, ferry.FerryError) and error.code == grpc.StatusCode.UNAVAILABLE
    assert _visible_files(folder) == [], "a killed transfer never shows a final file"
    assert len(_parts(folder)) == 1, "the killed process left its temp file behind"

    restarted = start_ferry(*serve_args)
    assert _parts(folder) == [], "startup sweeps abandoned temp files"

    fresh = _body(256 * KIB)
    url = http_server.add_file("fresh.bin", fresh)
    with ferry.Client(restarted.grpc_address) as client:
        path = client.download_file(url, target_dir="in")
        assert client.health() == "SERVING"
    assert path == folder.resolve() / "fresh.bin"
    assert path.read_bytes() == fresh
    assert _visible_files(folder) == ["fresh.bin"]
    assert _parts(data) == []


@pytest.mark.timeout(60)
def test_replicas_sharing_a_data_dir_fetch_the_source_once(start_ferry, http_server, tmp_path):
    data = tmp_path / "shared-data"
    replicas = [start_ferry("downloader", "--data-dir", str(data), "--allow-private-networks") for _ in range(2)]
    body = _body(2 * MIB)

    async def slow_start(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            await asyncio.sleep(1)  # every caller arrives while the first fetch is still pending
        return web.Response(body=body, content_type="application/octet-stream")

    url = http_server.route("/shared.bin", slow_start)
    clients = [ferry.Client(replica.grpc_address) for replica in replicas]
    callers = 20
    ready = threading.Barrier(callers)

    def call(i: int) -> Path | ferry.FerryError:
        ready.wait(10)
        try:
            return clients[i % 2].download_file(url, target_dir="in")
        except ferry.FerryError as error:
            return error

    try:
        with ThreadPoolExecutor(callers) as pool:
            results = list(pool.map(call, range(callers), timeout=45))
    finally:
        for client in clients:
            client.close()

    errors = [r for r in results if isinstance(r, ferry.FerryError)]
    assert errors == []
    assert len(http_server.gets("/shared.bin")) == 1, "one GET across both replicas"
    assert set(results) == {(data / "in" / "shared.bin").resolve()}
    assert results[0].read_bytes() == body
    assert _visible_files(data / "in") == ["shared.bin"]
    assert _parts(data) == []


@pytest.mark.timeout(60)
def test_a_caller_on_another_replica_takes_over_when_the_fetching_replica_is_killed(start_ferry, http_server, tmp_path):
    data = tmp_path / "shared-data"
    first, second = (start_ferry("downloader", "--data-dir", str(data), "--allow-private-networks") for _ in range(2))
    body = _body(2 * MIB)
    never_finishes = _trickle(body, interval=0.2)  # ~6 s: the first replica dies long before

    async def stall_the_first_get(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and len(http_server.gets(request.path)) == 1:
            return await never_finishes(request)
        return web.Response(body=body, content_type="application/octet-stream")

    url = http_server.route("/weights.bin", stall_the_first_get)
    doomed = Background(first.grpc_address, url, target_dir="in")
    wait_for(lambda: http_server.gets("/weights.bin") and _parts(data / "in"), "the first replica to start fetching")
    survivor = Background(second.grpc_address, url, target_dir="in")
    time.sleep(0.3)  # most likely queued behind the first replica's lock by now; the outcome is the same if not

    first.process.kill()

    error = doomed.outcome()
    assert isinstance(error, ferry.FerryError) and error.code == grpc.StatusCode.UNAVAILABLE
    path = survivor.outcome()
    assert path == (data / "in" / "weights.bin").resolve(), path
    assert path.read_bytes() == body
    assert len(http_server.gets("/weights.bin")) == 2, "the survivor fetched it again, once"
    assert _visible_files(data / "in") == ["weights.bin"]
    assert _parts(data) == [], "the survivor swept the dead replica's temp file"


@pytest.mark.timeout(60)
def test_sigterm_lets_an_active_download_finish_then_exits_zero(start_ferry, http_server, tmp_path):
    data = tmp_path / "data"
    stack = start_ferry("downloader", "--data-dir", str(data), "--allow-private-networks")
    body = _body(2 * MIB)  # 32 pieces, ~1.6 s
    url = http_server.route("/drain.bin", _trickle(body))

    download = Background(stack.grpc_address, url, target_dir="in")
    wait_for(lambda: http_server.gets("/drain.bin") and _parts(data / "in"), "the transfer to start")
    stack.signal(signal.SIGTERM)

    path = download.outcome()
    assert not isinstance(path, ferry.FerryError), path
    assert path == (data / "in" / "drain.bin").resolve()
    assert path.read_bytes() == body
    assert stack.wait(timeout=30) == 0
    assert len(http_server.gets("/drain.bin")) == 1
    assert _parts(data) == []
    assert os.listdir(data / "in") == ["drain.bin"]


@pytest.mark.timeout(60)
def test_sigterm_past_the_drain_deadline_cancels_the_download_and_leaves_nothing(start_ferry, http_server, tmp_path):
    data = tmp_path / "data"
    stack = start_ferry("downloader", "--data-dir", str(data), "--allow-private-networks", "--drain-seconds", "1")
    url = http_server.route("/long.bin", _trickle(_body(8 * MIB)))  # ~6 s: outlasts the 1 s drain

    download = Background(stack.grpc_address, url, target_dir="in")
    wait_for(lambda: http_server.gets("/long.bin") and _parts(data / "in"), "the transfer to start")
    stack.signal(signal.SIGTERM)

    error = download.outcome()
    assert isinstance(error, ferry.FerryError) and error.code == grpc.StatusCode.UNAVAILABLE
    assert stack.wait(timeout=30) == 0
    assert os.listdir(data / "in") == [], "neither a file nor a temp file is left"
