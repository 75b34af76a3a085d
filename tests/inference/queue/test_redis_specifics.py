"""What only the Redis queue has: its URL (TLS, password), Redis's own restarts and outages, its crash windows.

The contract every backend keeps is test_contract.py; each test here runs its own redis-server.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ferry.errors import InvalidArgument, NotFound, Unavailable
from ferry.inference.queue import redis_scripts as scripts
from ferry.inference.queue.base import NewRequest, State
from ferry.inference.queue.redis import RedisQueue
from ferry.inference.queue.redis_scripts import GROUP, cancelled_channel, stream_key
from tests.redis_server import RedisServer, ServerCertificate


def job(text: str = "x") -> NewRequest:
    return NewRequest("painter", "/", f'{{"text": "{text}"}}', expires_in=60)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture
async def queue(server: RedisServer) -> AsyncIterator[RedisQueue]:
    opened = await RedisQueue.connect(server.url)
    yield opened
    await opened.close()


# -- the URL -----------------------------------------------------------------------------


async def test_a_password_comes_from_the_url_or_the_argument_and_the_argument_wins() -> None:
    with RedisServer(password="s3cret") as server:
        with_url = await RedisQueue.connect(server.url.replace("redis://", "redis://:s3cret@"))
        request_id = await with_url.submit(job())
        await with_url.close()
        stale_url = server.url.replace("redis://", "redis://:old@")
        with_argument = await RedisQueue.connect(stale_url, password="s3cret")
        assert (await with_argument.status(request_id)).state == State.QUEUED
        await with_argument.close()


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_a_missing_or_wrong_password_is_unavailable_and_never_echoed(password: str | None) -> None:
    with RedisServer(password="s3cret") as server, pytest.raises(Unavailable) as caught:
        await RedisQueue.connect(server.url, password=password)
    assert caught.value.reason == "QUEUE_UNAVAILABLE"
    assert "s3cret" not in caught.value.message and "wrong" not in caught.value.message


def write_self_signed_certificate(directory: Path) -> ServerCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry-test-redis")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "redis.crt", directory / "redis.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ServerCertificate(cert_file, key_file, ca_file=cert_file)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tls=write_self_signed_certificate(tmp_path)) as running:
        yield running


async def test_rediss_talks_tls_to_a_server_whose_ca_the_url_names(tls_server: RedisServer) -> None:
    assert tls_server.tls is not None and tls_server.url.startswith("rediss://")
    queue = await RedisQueue.connect(f"{tls_server.url}?ssl_ca_certs={tls_server.tls.ca_file}")
    request_id = await queue.submit(job())
    assert (await queue.status(request_id)).position == 0
    await queue.close()


async def test_rediss_refuses_a_server_it_does_not_trust_and_plain_redis_cannot_talk_to_tls(
    tls_server: RedisServer,
) -> None:
    for url in (tls_server.url, tls_server.url.replace("rediss://", "redis://")):
        with pytest.raises(Unavailable) as caught:
            await RedisQueue.connect(url)
        assert caught.value.reason == "QUEUE_UNAVAILABLE"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "127.0.0.1:6379",
        "unix:///run/redis.sock",  # redis-py would take it; a queue URL names a host
        "redis://127.0.0.1:6379/0?no_such_option=1" + "x" * 5000,
    ],
)
async def test_a_url_that_is_not_a_redis_url_is_an_invalid_argument_with_a_short_message(url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await RedisQueue.connect(url)
    assert caught.value.reason == "BAD_QUEUE_URL" and len(caught.value.message) < 300
    if "no_such_option" not in url:
        assert "redis:// or rediss://" in caught.value.message


# -- Redis restarts and outages ------------------------------------------------------------


async def test_with_aof_a_redis_killed_and_restarted_loses_no_queued_or_running_request() -> None:
    with RedisServer(appendonly=True) as server:
        before = await RedisQueue.connect(server.url, lease_seconds=0.3)
        ids = [await before.submit(job(str(n))) for n in range(4)]
        running = await before.take("painter", timeout=1)
        assert running is not None and running.request_id == ids[0]
        await before.close()
        server.kill()
        server.start()
        after = await RedisQueue.connect(server.url, lease_seconds=0.3)
        assert [(await after.status(i)).position for i in ids[1:]] == [0, 1, 2]
        # The running one's replica went away with the old connection: its lease lapses and it runs again.
        taken = [await after.take("painter", timeout=5) for _ in ids]
        attempts = {claim.request_id: claim.attempt for claim in taken if claim is not None}
        assert attempts == {ids[0]: 2, ids[1]: 1, ids[2]: 1, ids[3]: 1}
        await after.close()


async def test_while_redis_is_down_calls_fail_unavailable_and_work_again_once_it_is_back(
    server: RedisServer, queue: RedisQueue
) -> None:
    request_id = await queue.submit(job())
    server.stop()
    for call in (
        queue.submit(job()),
        queue.status(request_id),
        queue.take("painter", timeout=0.1),
        queue.cancel(request_id),
        queue.depth("painter"),
    ):
        with pytest.raises(Unavailable) as caught:
            await call
        assert caught.value.reason == "QUEUE_UNAVAILABLE"
    server.start()  # without persistence: the Redis that comes back is empty
    with pytest.raises(NotFound):
        await queue.status(request_id)
    fresh = await queue.submit(job())
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and claim.request_id == fresh


async def test_cancels_reach_a_replica_again_after_redis_came_back(
    server: RedisServer, queue: RedisQueue, caplog: pytest.LogCaptureFixture
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for request_id in queue.cancellations():
            heard.put_nowait(request_id)

    listening = asyncio.create_task(listen())
    server.stop()
    # Down long enough for the client to give up its own reconnect attempts: the queue resubscribes itself.
    for _ in range(200):
        if "cancel subscription lost" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "cancel subscription lost" in caplog.text
    server.start()
    raw = redis.asyncio.from_url(server.url)
    channel = cancelled_channel("ferry")
    for _ in range(200):  # the replica subscribes again by itself, within its backoff (at most 2 s)
        if dict(await raw.pubsub_numsub(channel)).get(channel.encode()):
            break
        await asyncio.sleep(0.05)
    request_id = await queue.submit(job())
    assert await queue.take("painter", timeout=1) is not None
    assert await queue.cancel(request_id) == (State.IN_PROGRESS, True)
    assert await asyncio.wait_for(heard.get(), 5) == request_id
    listening.cancel()
    await raw.aclose()


async def test_connecting_to_a_redis_that_is_not_there_is_unavailable(dead_address: str) -> None:
    with pytest.raises(Unavailable) as caught:
        await RedisQueue.connect(f"redis://{dead_address}/0")
    assert caught.value.reason == "QUEUE_UNAVAILABLE"


async def test_a_waiting_take_outlives_its_stream_vanishing_and_hands_out_what_comes_next(
    server: RedisServer, queue: RedisQueue
) -> None:
    waiting = asyncio.create_task(queue.take("painter", timeout=5))
    raw = redis.asyncio.from_url(server.url)
    for _ in range(100):  # the take is blocked on the stream
        if (await raw.info("clients"))["blocked_clients"]:
            break
        await asyncio.sleep(0.02)
    await raw.flushall()  # an operator's FLUSHALL; a restart without persistence does the same to a blocked read
    request_id = await queue.submit(job())
    claim = await waiting
    assert claim is not None and claim.request_id == request_id
    await raw.aclose()


async def test_a_request_whose_record_redis_evicted_is_dropped_not_handed_out(
    server: RedisServer, queue: RedisQueue
) -> None:
    gone, kept = await queue.submit(job("1")), await queue.submit(job("2"))
    raw = redis.asyncio.from_url(server.url)
    await raw.delete(scripts.request_key("ferry", gone))  # as a maxmemory allkeys-* policy may
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and claim.request_id == kept
    assert await queue.depth("painter") == 0
    await raw.aclose()


# -- a replica dying between reading an entry and claiming it -------------------------------


async def read_as_a_replica_that_then_dies(server: RedisServer) -> None:
    """XREADGROUP's half of a take, by a consumer that never runs the claim: the entry sits in its pending list."""
    raw = redis.asyncio.from_url(server.url)
    reply = await raw.xreadgroup(GROUP, "died-after-reading", {stream_key("ferry", "painter"): ">"}, count=1)
    assert reply
    await raw.aclose()


async def test_a_request_read_by_a_replica_that_died_before_claiming_it_runs_as_its_first_attempt(
    server: RedisServer,
) -> None:
    queue = await RedisQueue.connect(server.url, lease_seconds=0.3)
    request_id = await queue.submit(job())
    await read_as_a_replica_that_then_dies(server)
    assert (await queue.status(request_id)).state == State.QUEUED
    claim = await queue.take("painter", timeout=5)
    assert claim is not None and (claim.request_id, claim.attempt) == (request_id, 1)
    await queue.close()


async def test_a_request_cancelled_after_a_replica_read_it_is_never_handed_out(server: RedisServer) -> None:
    queue = await RedisQueue.connect(server.url, lease_seconds=0.3)
    request_id = await queue.submit(job())
    await read_as_a_replica_that_then_dies(server)
    assert await queue.cancel(request_id) == (State.QUEUED, True)
    assert await queue.take("painter", timeout=1) is None
    assert (await queue.status(request_id)).state == State.COMPLETED
    await queue.close()


# -- calls retried after their reply was lost ------------------------------------------------
# redis-py sends a command again when the connection drops; the reply to the first may have been the
# one lost. The transitions are scripts (inference/queue/redis_scripts.py), run here as a replica would.


async def test_a_submit_sent_twice_queues_the_request_once(server: RedisServer, queue: RedisQueue) -> None:
    raw = redis.asyncio.from_url(server.url)
    submit = raw.register_script(scripts.SUBMIT)
    for _ in range(2):
        await submit(args=["ferry", "retried-id", "painter", "/", "{}", ""])
    assert await queue.depth("painter") == 1
    assert await raw.xlen(stream_key("ferry", "painter")) == 1
    await raw.aclose()


async def test_a_hand_out_sent_twice_is_one_attempt_under_one_lease(server: RedisServer, queue: RedisQueue) -> None:
    request_id = await queue.submit(job())
    raw = redis.asyncio.from_url(server.url)
    [[_, [(entry_id, _)]]] = await raw.xreadgroup(GROUP, "replica-x", {stream_key("ferry", "painter"): ">"}, count=1)
    deliver = raw.register_script(scripts.DELIVER)
    arguments = ["ferry", "painter", "replica-x", entry_id, request_id, "lease-1", 3, 60_000, 1000]
    first, second = [await deliver(args=arguments) for _ in range(2)]
    assert first == second and first[:3] == [b"claimed", request_id.encode(), 1]
    assert (await queue.status(request_id)).attempt == 1
    assert await queue.renew(request_id, "lease-1")
    await raw.aclose()


async def test_a_replica_that_claims_an_entry_another_took_over_gets_nothing(server: RedisServer) -> None:
    queue = await RedisQueue.connect(server.url, lease_seconds=0.3)
    request_id = await queue.submit(job())
    raw = redis.asyncio.from_url(server.url)
    [[_, [(entry_id, _)]]] = await raw.xreadgroup(GROUP, "slow", {stream_key("ferry", "painter"): ">"}, count=1)
    taken_over = await queue.take("painter", timeout=5)  # "slow" did not claim it within a lease
    assert taken_over is not None and taken_over.attempt == 1
    deliver = raw.register_script(scripts.DELIVER)
    late = await deliver(args=["ferry", "painter", "slow", entry_id, request_id, "lease-slow", 3, 60_000, 1000])
    assert late == [b"gone"]
    assert await queue.renew(request_id, taken_over.lease)
    await raw.aclose()
    await queue.close()
