"""The storage chain: retry a backend while it fails transiently, then fall back; multipart stays where it started.

Also how `--storage` specs become a chain, and the sweeper that keeps it
tidy. Backends are real: a moto S3 server on loopback, a TCP server that
drops every request (an S3 that is down, counting each attempt), and local
storage behind the real CDN. That the chain fulfils the Storage contract
itself is specified with the backends' in test_storage_contract.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from moto.server import ThreadedMotoServer

from ferry.errors import InvalidArgument, Unavailable
from ferry.services.config import StorageConfig
from ferry.services.storage.assembly import build_storage
from ferry.services.storage.base import MIN_PART_SIZE, NewObject, Storage
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.local import LocalStorage
from ferry.services.storage.s3 import S3Storage
from ferry.services.storage.sweeper import run_sweeper
from tests.harness import RawHttpServer
from tests.services.storage_fixtures import TurnedClock, put, served_local_storage

pytestmark = pytest.mark.usefixtures("aws_test_credentials")  # every test here talks to moto through boto3

CHAIN_LOG = "ferry.services.storage.chain"
DATA = b"encoded media"


@pytest.fixture
def moto_endpoint(s3_endpoint: str) -> str:
    return s3_endpoint


@pytest.fixture
def clock() -> TurnedClock:
    return TurnedClock()


@pytest.fixture
async def local(tmp_path: Path, clock: TurnedClock) -> AsyncIterator[LocalStorage]:
    async with served_local_storage(tmp_path / "data" / "files", clock=clock) as storage:
        yield storage


def s3_at(endpoint_url: str, bucket: str = "media") -> S3Storage:
    return S3Storage(bucket, "outputs", endpoint_url=endpoint_url, region="us-east-1")


def new_bucket(endpoint_url: str) -> str:
    name = f"ferry-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def chain_of(*backends: Storage, attempts: int = 3) -> StorageChain:
    return StorageChain(backends, attempts=attempts, backoff_seconds=0.001, max_backoff_seconds=0.01)


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1 for r in caplog.records if r.name == CHAIN_LOG and r.levelno == logging.INFO and "retrying" in r.message
    )


async def test_a_down_s3_is_retried_then_local_storage_takes_the_file(
    down: RawHttpServer, local: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = s3_at(down.url)
    with caplog.at_level(logging.INFO, logger=CHAIN_LOG):
        stored = await put(chain_of(s3, local, attempts=4), tmp_path, DATA)

    assert down.requests == 4
    assert retries_logged(caplog) == 3
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "s3://media/outputs" in warning.message and "falling back to local" in warning.message
    assert stored.backend == "local"
    assert await fetch(stored.url) == DATA


async def test_bytes_in_memory_fall_back_the_same_way(down: RawHttpServer, local: LocalStorage) -> None:
    stored = await chain_of(s3_at(down.url), local).put_bytes(
        DATA, NewObject(file_name="out.png", content_type="image/png", expires_in=None)
    )

    assert down.requests == 3
    assert (stored.backend, stored.sha256) == ("local", hashlib.sha256(DATA).hexdigest())
    assert await fetch(stored.url) == DATA


async def test_with_no_backend_left_storage_is_unavailable(
    down: RawHttpServer, tmp_path: Path, dead_address: str
) -> None:
    with pytest.raises(Unavailable) as unavailable:
        await put(chain_of(s3_at(down.url), s3_at(f"http://{dead_address}", "spare")), tmp_path, DATA)

    assert unavailable.value.reason == "STORAGE_UNAVAILABLE"
    assert "s3://media/outputs" in unavailable.value.message and "s3://spare/outputs" in unavailable.value.message
    assert down.requests == 3


async def test_a_misconfigured_backend_is_skipped_without_retrying(
    moto_endpoint: str, local: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing_bucket = s3_at(moto_endpoint, "no-such-bucket-here")
    with caplog.at_level(logging.INFO, logger=CHAIN_LOG):
        stored = await put(chain_of(missing_bucket, local, attempts=5), tmp_path, DATA)

    assert stored.backend == "local"
    assert retries_logged(caplog) == 0
    assert any("no-such-bucket-here" in r.message for r in caplog.records if r.levelno == logging.WARNING)


async def test_a_bad_request_fails_as_itself_without_falling_back(local: LocalStorage, tmp_path: Path) -> None:
    spare = LocalStorage(tmp_path / "spare" / "files", lambda: "http://spare")

    with pytest.raises(InvalidArgument):
        await put(chain_of(local, spare), tmp_path, DATA, file_name="../escape.png")
    assert list(spare.root.iterdir()) == []


# -- multipart ------------------------------------------------------------------


async def upload_in_parts(chain: StorageChain, tmp_path: Path, upload_id: str) -> Any:
    parts = []
    for number, data in ((1, b"\x01" * MIN_PART_SIZE), (2, b"tail")):
        source = tmp_path / f"part-{number}.incoming"
        source.write_bytes(data)
        parts.append((number, await chain.put_part(upload_id, number, source)))
    return await chain.complete_multipart(upload_id, parts)


async def test_a_multipart_upload_started_on_s3_completes_on_s3(
    moto_endpoint: str, local: LocalStorage, tmp_path: Path
) -> None:
    bucket = new_bucket(moto_endpoint)
    chain = chain_of(s3_at(moto_endpoint, bucket), local)

    upload_id = await chain.create_multipart(file_name="movie.mp4", content_type="video/mp4", expires_in=None)
    stored = await upload_in_parts(chain, tmp_path, upload_id)

    assert upload_id.startswith("0:")
    assert stored.backend == f"s3://{bucket}/outputs"
    assert list(local.uploads.iterdir()) == [] and list(local.root.iterdir()) == []


async def test_a_multipart_upload_that_fell_back_never_touches_the_down_backend_again(
    down: RawHttpServer, local: LocalStorage, tmp_path: Path
) -> None:
    chain = chain_of(s3_at(down.url), local, attempts=2)

    upload_id = await chain.create_multipart(file_name="movie.mp4", content_type="video/mp4", expires_in=None)
    assert (upload_id[:2], down.requests) == ("1:", 2)
    stored = await upload_in_parts(chain, tmp_path, upload_id)

    assert down.requests == 2
    assert stored.backend == "local"
    assert await fetch(stored.url) == b"\x01" * MIN_PART_SIZE + b"tail"


async def test_when_the_owner_goes_down_mid_upload_its_parts_are_unavailable_not_moved(
    local: LocalStorage, tmp_path: Path
) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    chain = chain_of(s3_at(endpoint, new_bucket(endpoint)), local)
    upload_id = await chain.create_multipart(file_name="movie.mp4", content_type="video/mp4", expires_in=None)
    server.stop()
    source = tmp_path / "part.incoming"
    source.write_bytes(b"x")

    with pytest.raises(Unavailable) as unavailable:
        await chain.put_part(upload_id, 1, source)

    assert unavailable.value.reason == "STORAGE_UNAVAILABLE"
    assert list(local.uploads.iterdir()) == []


# -- upkeep ---------------------------------------------------------------------


async def test_the_sweep_covers_every_backend_even_when_one_fails(
    local: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture, dead_address: str, clock: TurnedClock
) -> None:
    await put(local, tmp_path, DATA, expires_in=60)
    chain = chain_of(s3_at(f"http://{dead_address}"), local)

    assert await chain.sweep(clock.turn(120)) == 1
    assert any("sweep failed" in r.message for r in caplog.records if r.name == CHAIN_LOG)
    await chain.close()


async def test_the_sweeper_sweeps_until_cancelled_and_outlives_failures(
    local: LocalStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture, dead_address: str, clock: TurnedClock
) -> None:
    expired = await put(local, tmp_path, DATA, expires_in=1)
    clock.turn(1)
    unreachable = s3_at(f"http://{dead_address}")

    sweepers = [asyncio.create_task(run_sweeper(storage, 0.01, clock)) for storage in (local, unreachable)]
    await asyncio.sleep(0.3)

    assert not any(sweeper.done() for sweeper in sweepers)
    assert not (local.root / expired.key).exists()
    assert sum("sweep of s3://media/outputs failed" in r.message for r in caplog.records) >= 2
    for sweeper in sweepers:
        sweeper.cancel()
    await asyncio.gather(*sweepers, return_exceptions=True)


# -- configuration ----------------------------------------------------------------


def test_storage_specs_build_a_chain_in_the_given_order(tmp_path: Path) -> None:
    config = StorageConfig(storage=("s3://media/outputs/v1", "local"), public_url="https://cdn.example/")

    chain, local = build_storage(config, tmp_path, lambda: "http://127.0.0.1:8787")

    assert chain.name == "s3://media/outputs/v1 -> local"
    assert local is chain.backends[1] and local.root == tmp_path / "files"
    assert local.url("A" * 22, "a.png") == f"https://cdn.example/files/{'A' * 22}/a.png"


def test_without_a_public_url_local_files_are_addressed_at_the_cdn(tmp_path: Path) -> None:
    chain, local = build_storage(StorageConfig(), tmp_path, lambda: "http://127.0.0.1:8787")

    assert chain.name == "local" and local is not None
    assert local.url("A" * 22, "a.png").startswith("http://127.0.0.1:8787/files/")


def test_only_s3_storage_has_no_local_backend(tmp_path: Path) -> None:
    _, local = build_storage(StorageConfig(storage=("s3://media",)), tmp_path, lambda: "unused")
    assert local is None


@pytest.mark.parametrize(
    ("storage", "complaint"),
    [
        ((), "at least one"),
        (("disk",), "expected 'local' or 's3://BUCKET/PREFIX'"),
        (("s3://Media_Bucket!/x",), "not an S3 bucket name"),
        (("s3://key:secret@media/x",), "without credentials"),
        (("local", "local"), "twice"),
    ],
)
def test_bad_storage_specs_are_refused_clearly(storage: tuple[str, ...], complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        StorageConfig(storage=storage)


def test_a_public_s3_url_fits_one_bucket_only() -> None:
    with pytest.raises(ValueError, match="single s3:// storage"):
        StorageConfig(storage=("s3://one/x", "s3://two/x"), s3_public_url="https://public.example")
