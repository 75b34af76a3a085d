"""URLs of the stack's own local CDN resolve from storage: linked into place, never fetched, never guarded.

The downloader here runs with the default guard (loopback refused), beside a
real CDN on loopback serving a real LocalStorage: a stored file's URL can
only succeed by being resolved from storage. Every other URL, including
near-misses of the CDN's, still meets the guard. The test source is allowed
by its name `localhost` only, so it can play the outside server that
redirects to the CDN (whose URLs say 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from aiohttp import web

import ferry
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader, DownloadJob
from ferry.services.downloader.own_storage import OwnStorage
from ferry.services.storage.base import NewObject
from ferry.services.storage.cdn import create_cdn_app
from ferry.services.storage.local import LocalStorage
from ferry.v1 import downloader_pb2, downloader_pb2_grpc
from tests.harness import serve_on_loopback
from tests.services.downloader.helpers import events, leftovers
from tests.services.storage_fixtures import TurnedClock

CONFIG = DownloaderConfig(allow_hosts="localhost", retries=0)


class Cdn:
    """The embedded CDN over a LocalStorage, counting the requests it gets."""

    def __init__(self, root: Path) -> None:
        self.base_url = ""
        self.clock = TurnedClock()
        self.storage = LocalStorage(root, lambda: self.base_url, clock=self.clock)
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.requests.append(request.path)
            return await handler(request)

        app = create_cdn_app(None, self.storage)
        app.middlewares.append(count)
        self._runner, self.base_url = await serve_on_loopback(app)

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def cdn(data_dir, background_loop):
    cdn = Cdn(data_dir / "files")
    background_loop.run(cdn.start())
    yield cdn
    background_loop.run(cdn.stop())


@pytest.fixture(scope="module")
def downloader(data_dir, cdn, background_loop):
    downloader = Downloader(CONFIG, data_dir, own_storage=OwnStorage.of(cdn.storage))
    yield downloader
    background_loop.run(downloader.close())


def store(cdn: Cdn, background_loop, data: bytes, name: str = "photo.png", expires_in: int | None = None):
    return background_loop.run(
        cdn.storage.put_bytes(data, NewObject(file_name=name, content_type="image/png", expires_in=expires_in))
    )


def refusal(stub, **fields) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason a Download ends with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        events(stub, **fields)
    error = ferry.FerryError.from_rpc_error(caught.value)
    return error.code, error.reason


NO_STORED_FILE = (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")  # a CDN URL that names no live stored file
GUARDED = (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")  # not the CDN's own URL: the guard refused it


# -- the stack's own files ------------------------------------------------------------------


def test_a_stored_files_url_is_linked_from_storage_with_no_http_and_no_guard(grpc_stub, cdn, background_loop):
    stored = store(cdn, background_loop, b"\x89PNG own pixels", "cat photo.png")
    responses = events(grpc_stub, url=stored.url, target_dir="own")
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[0] == "started" and kinds[-1] == "completed" and "progress" in kinds
    done = responses[-1].completed
    path = Path(done.path)
    assert (path.name, done.file_size, done.content_type, done.cache_hit) == ("cat photo.png", 15, "image/png", False)
    assert path.read_bytes() == b"\x89PNG own pixels"
    assert os.stat(path).st_ino == os.stat(cdn.storage.path_of(stored)).st_ino, "a hard link, not a copy"
    assert cdn.requests == [], "no HTTP request reached the CDN"


def test_the_same_url_again_is_a_cache_hit_and_force_links_it_anew(grpc_stub, cdn, background_loop):
    stored = store(cdn, background_loop, b"same bytes")
    first = events(grpc_stub, url=stored.url, target_dir="again")[-1].completed
    again = events(grpc_stub, url=stored.url, target_dir="again")[-1].completed
    forced = events(grpc_stub, url=stored.url, target_dir="again", force=True)[-1].completed
    assert (first.cache_hit, again.cache_hit, forced.cache_hit) == (False, True, False)
    assert first.path == again.path == forced.path and Path(forced.path).read_bytes() == b"same bytes"


def test_a_stored_file_lands_in_a_fresh_folder_and_the_weights_store_too(grpc_stub, cdn, background_loop, data_dir):
    stored = store(cdn, background_loop, b"weights", "model.bin")
    fresh = Path(events(grpc_stub, url=stored.url)[-1].completed.path)
    weights = Path(
        events(grpc_stub, url=stored.url, kind=downloader_pb2.DOWNLOAD_KIND_MODEL_WEIGHTS)[-1].completed.path
    )
    assert fresh.is_relative_to(data_dir / "tmp") and weights.is_relative_to(data_dir / ".ferry" / "model_weights")
    assert fresh.read_bytes() == weights.read_bytes() == b"weights"


def test_filesize_limit_holds_for_stored_files(grpc_stub, cdn, background_loop, data_dir):
    stored = store(cdn, background_loop, b"x" * 2000)
    refused = refusal(grpc_stub, url=stored.url, target_dir="limited", filesize_limit_bytes=1999)
    assert refused == (grpc.StatusCode.RESOURCE_EXHAUSTED, "FILE_TOO_LARGE")
    assert not (data_dir / "limited" / "photo.png").exists() and leftovers(data_dir) == []


def test_concurrent_requests_for_a_stored_file_share_one_placement(grpc_addr, grpc_server, cdn, background_loop):
    stored = store(cdn, background_loop, b"shared" * 1000)

    async def many() -> list[downloader_pb2.DownloadCompleted]:
        async with grpc.aio.insecure_channel(grpc_addr) as channel:
            stub = downloader_pb2_grpc.DownloaderServiceStub(channel)

            async def one() -> downloader_pb2.DownloadCompleted:
                request = downloader_pb2.DownloadRequest(url=stored.url, target_dir="together")
                return [r async for r in stub.Download(request)][-1].completed

            return await asyncio.gather(*(one() for _ in range(20)))

    done = asyncio.run(many())
    assert len({d.path for d in done}) == 1 and Path(done[0].path).read_bytes() == b"shared" * 1000


def test_across_filesystems_a_stored_file_is_copied_whole(cdn, background_loop, data_dir):
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or os.stat(elsewhere).st_dev == os.stat(data_dir).st_dev:
        pytest.skip("no second filesystem to download into")
    temp = elsewhere / f"ferry-test-{os.getpid()}"
    stored = store(cdn, background_loop, b"across" * 4000)
    downloader = Downloader(
        DownloaderConfig(temp_dir=temp), data_dir, own_storage=OwnStorage.of(cdn.storage)
    )  # fresh folders under /dev/shm: another filesystem than the stored file's

    async def download() -> list:
        return [event async for event in downloader.download(DownloadJob(url=stored.url))]

    try:
        done = background_loop.run(download())[-1]
        assert done.path.read_bytes() == b"across" * 4000
        assert os.stat(done.path).st_dev != os.stat(cdn.storage.path_of(stored)).st_dev
        assert list(done.path.parent.glob(".*.ferry-part")) == []
    finally:
        background_loop.run(downloader.close())
        for path in sorted(temp.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        temp.rmdir()


# -- what is not a live stored file -----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/files/../../etc/passwd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/AAAAAAAAAAAAAAAAAAAAAA/photo.png",
        "/files/not-an-id/photo.png",
        "/healthz",
        "/",
    ],
)
def test_a_cdn_url_naming_no_stored_file_is_not_found_and_reads_nothing(grpc_stub, cdn, data_dir, path):
    assert refusal(grpc_stub, url=cdn.base_url + path, target_dir="hostile") == NO_STORED_FILE
    assert not (data_dir / "hostile").exists() or list((data_dir / "hostile").iterdir()) == []
    assert cdn.requests == []


def test_a_cdn_url_with_an_encoded_separator_is_nobodys_own_and_meets_the_guard(grpc_stub, cdn):
    assert refusal(grpc_stub, url=cdn.base_url + "/files/..%2F..%2F..%2Fetc/passwd") == GUARDED
    assert cdn.requests == []


def test_a_stored_files_id_with_another_name_is_not_found(grpc_stub, cdn, background_loop):
    stored = store(cdn, background_loop, b"named")
    assert refusal(grpc_stub, url=stored.url.replace("photo.png", "other.png")) == NO_STORED_FILE


def test_an_expired_stored_file_is_not_found_even_before_the_sweep(grpc_stub, cdn, background_loop):
    stored = store(cdn, background_loop, b"short-lived", expires_in=1)
    cdn.clock.turn(2)
    assert cdn.storage.path_of(stored).exists(), "not swept yet"
    assert refusal(grpc_stub, url=stored.url, target_dir="expired") == NO_STORED_FILE


def test_the_cdns_host_on_another_port_meets_the_guard(grpc_stub, cdn, background_loop, http_server):
    stored = store(cdn, background_loop, b"port")
    http_server.add_file(f"files/{stored.key}/photo.png", b"port")  # another server on the same host
    other_port = stored.url.replace(cdn.base_url, http_server.base_url)
    assert refusal(grpc_stub, url=other_port) == GUARDED
    assert http_server.requests == []


def test_the_cdns_url_with_credentials_in_it_meets_the_guard(grpc_stub, cdn, background_loop):
    stored = store(cdn, background_loop, b"creds")
    assert refusal(grpc_stub, url=stored.url.replace("http://", "http://user:secret@")) == GUARDED


def test_a_redirect_from_an_outside_url_to_the_cdn_is_still_guarded(grpc_stub, cdn, background_loop, http_server):
    stored = store(cdn, background_loop, b"redirected")

    async def to_the_cdn(_request):
        raise web.HTTPFound(stored.url)

    outside = http_server.route("/innocent", to_the_cdn).replace("127.0.0.1", "localhost")
    assert refusal(grpc_stub, url=outside, target_dir="redirected") == GUARDED
    assert http_server.hits.get("/innocent") == 1 and cdn.requests == []


def test_the_server_keeps_serving_after_refusing_cdn_urls(grpc_stub, cdn, background_loop):
    refusal(grpc_stub, url=cdn.base_url + "/files/../../etc/passwd")
    stored = store(cdn, background_loop, b"after")
    assert Path(events(grpc_stub, url=stored.url, target_dir="after")[-1].completed.path).read_bytes() == b"after"
