"""A storage backend that keeps failing is skipped for a cool-down, probed now and then, and taken back
by itself when it answers again; health and the logs say which backend is open.

The breaker's rules are specified against a clock the test turns (a seam `Breaker` defines); the chain's
behaviour against real backends: moto's S3 server stopped and started again, an S3 endpoint that drops
every request (counting them), local storage behind the real CDN, and the whole encoder stack in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from moto.server import ThreadedMotoServer

import ferry
from ferry.errors import InvalidArgument, Unavailable
from ferry.services.config import ServerConfig, StackConfig, StorageConfig
from ferry.services.launch import Stack
from ferry.services.storage.base import MIN_PART_SIZE, NewObject, Storage, StoredObject
from ferry.services.storage.breaker import Admission, Breaker
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.local import LocalStorage
from ferry.services.storage.s3 import S3Storage
from tests.harness import BackgroundLoop, RawHttpServer, wait_for
from tests.services.storage_fixtures import served_local_storage
from tests.services.test_storage_chain import new_bucket

pytestmark = pytest.mark.usefixtures("aws_test_credentials")  # every chain here talks to S3 through boto3

CHAIN_LOG = "ferry.services.storage.chain"
DATA = b"encoded media"
NEVER = 3600.0  # a cool-down no test outlives: the breaker stays open


# -- the breaker's rules -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_closed_breaker_admits_every_write_and_a_success_forgets_earlier_failures(clock: Clock) -> None:
    breaker = Breaker(3, 10, clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    breaker.failed()

    assert not breaker.is_open
    assert breaker.admit() is Admission.TRY


def test_failures_in_a_row_open_it_and_writes_skip_the_backend_until_the_cool_down_ends(clock: Clock) -> None:
    breaker = Breaker(3, 10, clock)

    assert [breaker.failed() for _ in range(3)] == [False, False, True]
    assert breaker.is_open and breaker.admit() is None
    clock.now = 9.9
    assert breaker.admit() is None


def test_after_the_cool_down_one_write_probes_while_the_others_keep_skipping(clock: Clock) -> None:
    breaker = Breaker(1, 10, clock)
    breaker.failed()
    clock.now = 10

    assert breaker.admit() is Admission.PROBE
    assert breaker.admit() is None


def test_a_successful_probe_closes_it(clock: Clock) -> None:
    breaker = Breaker(1, 10, clock)
    breaker.failed()
    clock.now = 10
    breaker.admit()

    assert breaker.succeeded() is True
    assert not breaker.is_open and breaker.admit() is Admission.TRY


def test_a_failed_probe_opens_it_for_another_cool_down(clock: Clock) -> None:
    breaker = Breaker(1, 10, clock)
    breaker.failed()
    clock.now = 10
    breaker.admit()

    assert breaker.failed() is False, "still open: not a new opening"
    assert breaker.admit() is None
    clock.now = 19.9
    assert breaker.admit() is None
    clock.now = 20
    assert breaker.admit() is Admission.PROBE


def test_a_probe_that_ends_as_the_requests_own_fault_lets_the_next_write_probe(clock: Clock) -> None:
    breaker = Breaker(1, 10, clock)
    breaker.failed()
    clock.now = 10
    breaker.admit()

    breaker.probe_ended()

    assert breaker.is_open and breaker.admit() is Admission.PROBE


# -- the chain, against real backends ------------------------------------------------------


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    async with served_local_storage(tmp_path / "data" / "files") as storage:
        yield storage


class RestartableMoto:
    """moto's S3 server on one loopback port, stopped and started again; buckets outlive a restart."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()


@pytest.fixture
def moto() -> Iterator[RestartableMoto]:
    server = RestartableMoto()
    yield server
    server.stop()


def chain_of(
    *backends: Storage, attempts: int = 10, failures_to_open: int = 3, cool_down: float = NEVER
) -> StorageChain:
    return StorageChain(
        backends,
        attempts=attempts,
        backoff_seconds=0.001,
        max_backoff_seconds=0.01,
        failures_to_open=failures_to_open,
        cool_down_seconds=cool_down,
    )


def s3_at(endpoint_url: str, bucket: str = "media") -> S3Storage:
    return S3Storage(bucket, "outputs", endpoint_url=endpoint_url, region="us-east-1")


async def put(chain: StorageChain, **options: Any) -> StoredObject:
    options = {"file_name": "out.png", "content_type": "image/png", "expires_in": None, **options}
    return await chain.put_bytes(DATA, NewObject(**options))


class Watcher:
    def __init__(self, chain: StorageChain) -> None:
        self.heard: list[tuple[str, bool]] = []
        chain.watch(self.tell)

    async def tell(self, backend_name: str, serving: bool) -> None:
        self.heard.append((backend_name, serving))


async def test_once_open_a_down_backend_is_skipped_without_a_single_attempt(
    down: RawHttpServer, local: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    chain = chain_of(s3_at(down.url), local, attempts=10, failures_to_open=3)
    watcher = Watcher(chain)

    with caplog.at_level(logging.INFO, logger=CHAIN_LOG):
        first = await put(chain)
    assert down.requests == 3, "the breaker opened after 3 failures: the other 7 retries were not spent"
    assert chain.breakers[0].is_open
    assert watcher.heard == [("s3://media/outputs", False)]
    assert any("s3://media/outputs: breaker open" in r.message for r in caplog.records if r.levelno == logging.WARNING)

    later = [await put(chain) for _ in range(5)]

    assert down.requests == 3
    assert [stored.backend for stored in (first, *later)] == ["local"] * 6


async def test_concurrent_writes_open_it_together_and_none_waits_out_the_retries(
    down: RawHttpServer, local: LocalStorage
) -> None:
    chain = chain_of(s3_at(down.url), local, attempts=10, failures_to_open=3)

    stored = await asyncio.gather(*(put(chain) for _ in range(8)))

    assert {s.backend for s in stored} == {"local"}
    assert down.requests < 8 * 10, "the writes stopped retrying once the breaker opened"
    assert chain.breakers[0].is_open


async def test_with_every_backend_open_a_write_is_unavailable_at_once_naming_them(down: RawHttpServer) -> None:
    chain = chain_of(s3_at(down.url), attempts=10, failures_to_open=2)
    with pytest.raises(Unavailable):
        await put(chain)
    attempts_before = down.requests

    with pytest.raises(Unavailable) as unavailable:
        await put(chain)

    assert down.requests == attempts_before
    assert unavailable.value.reason == "STORAGE_UNAVAILABLE"
    assert "s3://media/outputs: skipped, its breaker is open" in unavailable.value.message


async def test_when_s3_comes_back_writes_return_to_it_by_themselves(
    moto: RestartableMoto, local: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = new_bucket(moto.url)
    chain = chain_of(s3_at(moto.url, bucket), local, failures_to_open=2, cool_down=0.2)
    watcher = Watcher(chain)
    assert (await put(chain)).backend == f"s3://{bucket}/outputs"

    moto.stop()
    assert (await put(chain)).backend == "local"
    assert chain.breakers[0].is_open
    moto.start()

    async def lands_on_s3() -> bool:
        for _ in range(400):
            if (await put(chain)).backend != "local":
                return True
            await asyncio.sleep(0.05)
        return False

    with caplog.at_level(logging.INFO, logger=CHAIN_LOG):
        assert await lands_on_s3()
    assert not chain.breakers[0].is_open
    assert watcher.heard == [(f"s3://{bucket}/outputs", False), (f"s3://{bucket}/outputs", True)]
    assert any("probing it with one attempt" in r.message for r in caplog.records)
    assert any("breaker closed" in r.message for r in caplog.records if r.levelno == logging.WARNING)


async def test_a_failed_probe_costs_one_attempt_and_writes_keep_falling_back(
    down: RawHttpServer, local: LocalStorage
) -> None:
    chain = chain_of(s3_at(down.url), local, attempts=10, failures_to_open=2, cool_down=0.05)
    await put(chain)
    opened_after = down.requests

    async def probed() -> bool:
        for _ in range(200):
            await put(chain)
            if down.requests > opened_after:
                return True
            await asyncio.sleep(0.02)
        return False

    assert await probed()
    assert down.requests == opened_after + 1, "a probe is a single attempt, never a round of retries"
    assert chain.breakers[0].is_open


async def test_a_multipart_upload_created_on_s3_stays_there_while_its_breaker_is_open(
    moto: RestartableMoto, local: LocalStorage, tmp_path: Path
) -> None:
    bucket = new_bucket(moto.url)
    chain = chain_of(s3_at(moto.url, bucket), local, failures_to_open=2)
    upload_id = await chain.create_multipart(file_name="movie.mp4", content_type="video/mp4", expires_in=None)
    moto.stop()
    assert (await put(chain)).backend == "local"
    assert chain.breakers[0].is_open
    moto.start()

    parts = []
    for number, data in ((1, b"\x01" * MIN_PART_SIZE), (2, b"tail")):
        source = tmp_path / f"part-{number}.incoming"
        source.write_bytes(data)
        parts.append((number, await chain.put_part(upload_id, number, source)))
    stored = await chain.complete_multipart(upload_id, parts)

    assert stored.backend == f"s3://{bucket}/outputs"
    assert stored.sha256 == hashlib.sha256(b"\x01" * MIN_PART_SIZE + b"tail").hexdigest()
    assert list(local.uploads.iterdir()) == []
    assert not chain.breakers[0].is_open, "the parts S3 took showed it answers again"


async def test_a_bad_request_neither_opens_the_breaker_nor_counts_against_the_backend(local: LocalStorage) -> None:
    chain = chain_of(local, failures_to_open=1)

    for _ in range(3):
        with pytest.raises(InvalidArgument):
            await put(chain, file_name="../escape.png")

    assert not chain.breakers[0].is_open and chain.breakers[0].failures_in_a_row == 0


# -- health, through the encoder's own server -------------------------------------------------


@pytest.fixture
def stack_with_a_dead_s3(
    background_loop: BackgroundLoop, tmp_path: Path, dead_address: str, aws_test_credentials: None
) -> Iterator[Stack]:
    storage = StorageConfig(storage=("s3://nowhere/x", "local"), s3_endpoint_url=f"http://{dead_address}")
    server = ServerConfig(grpc_port=0, cdn_port=0, data_dir=tmp_path / "data", drain_seconds=1)
    stack = Stack(StackConfig(server=server, storage=storage), ["encoder"])
    background_loop.run(stack.start())
    yield stack
    background_loop.run(stack.stop())


def test_health_reports_an_open_backend_while_the_server_keeps_serving(
    stack_with_a_dead_s3: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    s3_health = "ferry.v1.EncoderService/storage/s3://nowhere/x"
    with ferry.Client(f"127.0.0.1:{stack_with_a_dead_s3.grpc_port}") as client:
        assert client.health(s3_health) == "SERVING"
        with caplog.at_level(logging.WARNING, logger=CHAIN_LOG):
            stored = [client.upload_bytes(b"kept anyway", "text/plain", "a.txt") for _ in range(3)]

        assert {file.url.startswith(stack_with_a_dead_s3.cdn_url or "?") for file in stored} == {True}
        wait_for(lambda: client.health(s3_health) == "NOT_SERVING", "the S3 backend's health to turn NOT_SERVING")
        assert client.health() == "SERVING"
        assert client.health("ferry.v1.EncoderService/storage/local") == "SERVING"
        listed = health_pb2_grpc.HealthStub(client.channel).List(health_pb2.HealthListRequest()).statuses
        assert listed[s3_health].status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert any("s3://nowhere/x: breaker open" in r.message for r in caplog.records)


def test_an_unknown_health_name_is_still_not_found(stack_with_a_dead_s3: Stack) -> None:
    with (
        grpc.insecure_channel(f"127.0.0.1:{stack_with_a_dead_s3.grpc_port}") as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        request = health_pb2.HealthCheckRequest(service="ferry.v1.EncoderService/storage/s3://elsewhere/x")
        health_pb2_grpc.HealthStub(channel).Check(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
