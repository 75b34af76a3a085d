"""Download records and lock files under `.ferry/` go with their downloads, and stale ones are swept.

Nothing another process holds is ever removed: processes sharing a data dir
coordinate through these lock files, so each test that sweeps also shows that
a lock held elsewhere (a real second process) survives.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from ferry.atomic_files import PART_SUFFIX
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader, DownloadJob
from ferry.services.downloader.locks import LockFiles, path_lock_key
from ferry.services.downloader.records import flight_key
from ferry.v1 import downloader_pb2
from tests.harness import wait_for
from tests.services.downloader.helpers import events, status_of

CONFIG = DownloaderConfig(allow_private_networks=True, retries=0)  # the source is a loopback server


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


def lock_file(data_dir: Path, key: str) -> Path:
    return data_dir / ".ferry" / "locks" / f"{key}.lock"


def record_file(data_dir: Path, key: str) -> Path:
    return data_dir / ".ferry" / "records" / f"{key}.json"


def download(stub, url: str, target: str) -> Path:
    return Path(events(stub, url=url, target_dir=target)[-1].completed.path)


@contextmanager
def held_by_another_process(path: Path) -> Iterator[None]:
    """A second process holding `path`'s exclusive flock until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys\n"
                f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\n"
                "sys.stdin.read()\n"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


# -- removed with their downloads -----------------------------------------------------------


def test_a_failed_first_download_leaves_no_record_and_no_lock_file(grpc_stub, http_server, data_dir):
    url = http_server.url("missing.bin")
    code, _ = status_of(grpc_stub, url=url, target_dir="failed")
    assert code == grpc.StatusCode.NOT_FOUND
    key = flight_key((data_dir / "failed").resolve(), url)
    assert not lock_file(data_dir, key).exists() and not record_file(data_dir, key).exists()


def test_a_failed_download_into_a_fresh_folder_leaves_no_empty_folder(grpc_stub, http_server, data_dir):
    before = set((data_dir / "tmp").iterdir())
    status_of(grpc_stub, url=http_server.url("missing.bin"))
    assert set((data_dir / "tmp").iterdir()) == before


def test_a_failed_download_again_keeps_the_earlier_download_with_its_record_and_lock(grpc_stub, http_server, data_dir):
    url = http_server.add_file("kept.bin", b"first")
    path = download(grpc_stub, url, "kept")
    (http_server.root / "kept.bin").unlink()
    code, _ = status_of(grpc_stub, url=url, target_dir="kept", force=True)
    assert code == grpc.StatusCode.NOT_FOUND
    key = flight_key(path.parent, url)
    assert path.read_bytes() == b"first"
    assert lock_file(data_dir, key).exists() and record_file(data_dir, key).exists()


def test_a_cancelled_first_download_leaves_no_lock_file(grpc_stub, http_server, data_dir):
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(1 << 30)})
        await response.prepare(request)
        for _ in range(200):  # until the downloader hangs up
            await response.write(b"x" * 1024)
            await asyncio.sleep(0.05)
        return response

    url = http_server.route("/endless", endless)
    call = grpc_stub.Download(downloader_pb2.DownloadRequest(url=url, target_dir="cancelled"))
    assert next(call).WhichOneof("event") == "started"
    call.cancel()
    key = flight_key((data_dir / "cancelled").resolve(), url)
    wait_for(lambda: not lock_file(data_dir, key).exists(), "the cancelled download's lock file to go")
    assert not record_file(data_dir, key).exists()


def test_a_readers_lock_file_goes_when_the_read_ends(grpc_stub, http_server, data_dir):
    path = download(grpc_stub, http_server.add_file("read.bin", b"r" * 3000), "read")
    chunks = list(grpc_stub.Read(downloader_pb2.ReadRequest(path=str(path))))
    assert b"".join(c.chunk for c in chunks) == b"r" * 3000
    assert not lock_file(data_dir, path_lock_key(path)).exists()


# -- swept when stale -----------------------------------------------------------------------


def test_the_sweep_removes_the_record_and_lock_of_a_file_deleted_behind_its_back(
    grpc_stub, http_server, data_dir, downloader
):
    url = http_server.add_file("deleted.bin", b"deleted soon")
    path = download(grpc_stub, url, "deleted")
    key = flight_key(path.parent, url)
    path.unlink()
    downloader.sweep_bookkeeping()
    assert not record_file(data_dir, key).exists() and not lock_file(data_dir, key).exists()


def test_the_sweep_keeps_what_a_live_download_needs(grpc_stub, http_server, data_dir, downloader):
    url = http_server.add_file("alive.bin", b"still here")
    path = download(grpc_stub, url, "alive")
    key = flight_key(path.parent, url)
    downloader.sweep_bookkeeping()
    assert record_file(data_dir, key).exists() and lock_file(data_dir, key).exists()
    assert events(grpc_stub, url=url, target_dir="alive")[-1].completed.cache_hit


def test_the_sweep_removes_lock_files_nobody_holds_and_keeps_one_another_process_holds(data_dir, downloader):
    locks = data_dir / ".ferry" / "locks"
    orphan, held = locks / "orphan.lock", locks / "held-elsewhere.lock"
    orphan.touch()
    with held_by_another_process(held):
        downloader.sweep_bookkeeping()
        assert not orphan.exists()
        assert held.exists(), "a lock another process holds survives the sweep"
    downloader.sweep_bookkeeping()
    assert not held.exists(), "once let go, it guards nothing"


def test_a_record_whose_lock_another_process_holds_survives_the_sweep(grpc_stub, http_server, data_dir, downloader):
    url = http_server.add_file("rewriting.bin", b"being rewritten")
    path = download(grpc_stub, url, "rewriting")
    key = flight_key(path.parent, url)
    path.unlink()  # as another replica does while it writes the file again, holding the key's lock
    with held_by_another_process(lock_file(data_dir, key)):
        downloader.sweep_bookkeeping()
        assert record_file(data_dir, key).exists() and lock_file(data_dir, key).exists()
    downloader.sweep_bookkeeping()
    assert not record_file(data_dir, key).exists()


def test_stale_records_are_swept_at_start_and_then_periodically(tmp_path, background_loop, http_server):
    data = tmp_path / "data"
    records = data / ".ferry" / "records"

    def fetch(engine: Downloader, name: str) -> Path:
        async def run() -> Path:
            job = DownloadJob(url=http_server.add_file(name, b"x"), target_dir=name)
            return [event async for event in engine.download(job)][-1].path

        return background_loop.run(run())

    before = Downloader(CONFIG, data)
    gone_while_down = fetch(before, "a.bin")
    background_loop.run(before.close())
    gone_while_down.unlink()

    restarted = Downloader(CONFIG, data)
    tidying = asyncio.run_coroutine_threadsafe(restarted.keep_tidy(0.05), background_loop.loop)
    try:
        wait_for(lambda: not list(records.glob("*.json")), "the first sweep, at start")
        gone_later = fetch(restarted, "b.bin")
        assert len(list(records.glob("*.json"))) == 1
        gone_later.unlink()
        wait_for(lambda: not list(records.glob("*.json")), "a later, periodic sweep")
    finally:
        tidying.cancel()
        background_loop.run(restarted.close())


def test_the_sweep_of_abandoned_parts_passes_over_a_folder_removed_while_it_walks(tmp_path, background_loop):
    """The storage's sweeper shares the data dir and removes expired objects' folders meanwhile: a stack with
    expired files in it failed to start when the walk met a folder gone."""
    data = tmp_path / "data"
    for folder in ("a", "b"):
        (data / folder).mkdir(parents=True)
        (data / folder / f".{folder}key.0123{PART_SUFFIX}").write_bytes(b"left by a killed process")
    downloader = Downloader(CONFIG, data)
    lock_first_part = downloader.locks.try_exclusive
    removed_meanwhile: list[str] = []

    def sweeper_removes_the_other_folder(key: str) -> int | None:
        if not removed_meanwhile:
            other = "b" if key == "akey" else "a"
            shutil.rmtree(data / other)
            removed_meanwhile.append(other)
        return lock_first_part(key)

    downloader.locks.try_exclusive = sweeper_removes_the_other_folder  # type: ignore[method-assign]
    try:
        assert downloader.sweep_abandoned_parts() == 1
        assert not list(data.rglob(f"*{PART_SUFFIX}"))
    finally:
        background_loop.run(downloader.close())


# -- removing a lock file never lets two holders in -------------------------------------------


async def test_a_waiter_on_a_removed_lock_file_locks_the_file_there_now(tmp_path):
    locks = LockFiles(tmp_path / "locks")
    first_holds, waiter_holds = asyncio.Event(), asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("key") as lock:
            first_holds.set()
            await release.wait()
            lock.remove_on_release()

    async def waiter() -> None:
        async with locks.hold("key"):
            waiter_holds.set()
            await asyncio.sleep(3600)

    holding = asyncio.create_task(first())
    await first_holds.wait()
    waiting = asyncio.create_task(waiter())  # opens the file the first holder is about to remove
    await asyncio.sleep(0.1)
    release.set()
    await holding
    await asyncio.wait_for(waiter_holds.wait(), 10)
    try:
        assert locks.try_exclusive("key") is None, "the waiter holds the key's lock file, not an orphan"
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
