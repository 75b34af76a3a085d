"""What only the Redis queue has: its URL (TLS, password), Redis's own restarts and outages, its crash windows.

The contract every backend keeps is test_contract.py; each test here runs its own redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from ferry.errors import InvalidArgument, NotFound, Unavailable
from ferry.inference.queue import redis_scripts as scripts
from ferry.inference.queue.base import Claim, Failure, NewRequest, Priority, State
from ferry.inference.queue.redis import RedisQueue
from ferry.inference.queue.redis_scripts import GROUP, cancelled_channel, doorbell_key, stream_key
from tests.certificates import write_self_signed
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


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the same Redis, to do to it what an operator, Redis itself or another replica may."""
    client = redis.asyncio.from_url(server.url)
    yield client
    await client.aclose()


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
    cert_file, key_file = write_self_signed(directory, "ferry-test-redis")
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


async def wait_until_a_take_is_blocked(raw: redis.asyncio.Redis) -> None:
    for _ in range(100):
        if (await raw.info("clients"))["blocked_clients"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no take is waiting")


async def a_waiting_take(queue: RedisQueue, raw: redis.asyncio.Redis) -> asyncio.Task[Claim | None]:
    """A take of the painter's next request, started with nothing to take: it is blocked in Redis."""
    waiting = asyncio.create_task(queue.take("painter", timeout=5))
    await wait_until_a_take_is_blocked(raw)
    return waiting


async def assert_it_takes_the_next_request(waiting: asyncio.Task[Claim | None], queue: RedisQueue) -> None:
    """A request submitted now is the one the waiting take hands out."""
    request_id = await queue.submit(job())
    claim = await waiting
    assert claim is not None and claim.request_id == request_id


async def test_a_waiting_take_outlives_its_stream_vanishing_and_hands_out_what_comes_next(
    raw: redis.asyncio.Redis, queue: RedisQueue
) -> None:
    waiting = await a_waiting_take(queue, raw)  # blocked on the stream
    await raw.flushall()  # an operator's FLUSHALL; a restart without persistence does the same to a blocked read
    await assert_it_takes_the_next_request(waiting, queue)


async def test_a_request_whose_record_redis_evicted_is_dropped_not_handed_out(
    raw: redis.asyncio.Redis, queue: RedisQueue
) -> None:
    gone, kept = await queue.submit(job("1")), await queue.submit(job("2"))
    await raw.delete(scripts.request_key("ferry", gone))  # as a maxmemory allkeys-* policy may
    claim = await queue.take("painter", timeout=1)
    assert claim is not None and claim.request_id == kept
    assert await queue.depth("painter") == 0


# -- waiting takers and the doorbell --------------------------------------------------------
# A taker with nothing to take waits on the app's doorbell, which each submit rings once; what it then
# takes is chosen when it claims, not by which ring woke it.


async def test_a_waiting_take_woken_by_a_low_request_takes_the_normal_one_submitted_with_it(
    raw: redis.asyncio.Redis, queue: RedisQueue
) -> None:
    waiting = await a_waiting_take(queue, raw)
    async with raw.pipeline(transaction=True) as together:  # both land before the woken take looks
        together.eval(scripts.SUBMIT, 0, "ferry", "low", "painter", "/", "{}", "", "1", "", "", "")
        together.eval(scripts.SUBMIT, 0, "ferry", "normal", "painter", "/", "{}", "", "0", "", "", "")
        await together.execute()
    claim = await waiting
    assert claim is not None and claim.request_id == "normal"
    assert (await queue.status("low")).position == 0


async def test_a_ring_for_a_request_cancelled_meanwhile_keeps_the_take_waiting_for_the_next(
    raw: redis.asyncio.Redis, queue: RedisQueue
) -> None:
    waiting = await a_waiting_take(queue, raw)
    async with raw.pipeline(transaction=True) as submit_and_cancel:
        submit_and_cancel.eval(scripts.SUBMIT, 0, "ferry", "gone", "painter", "/", "{}", "", "0", "", "", "")
        submit_and_cancel.eval(scripts.CANCEL, 0, "ferry", "gone", 60_000, 1000)
        await submit_and_cancel.execute()
    await wait_until_a_take_is_blocked(raw)  # woken for nothing, it waits again
    assert not waiting.done()
    await assert_it_takes_the_next_request(waiting, queue)


async def test_requests_taken_without_waiting_leave_no_rings_to_wake_takers_for_nothing(
    raw: redis.asyncio.Redis, queue: RedisQueue
) -> None:
    for n in range(3):
        await queue.submit(job(str(n)))
    assert await raw.llen(doorbell_key("ferry", "painter")) == 3
    for _ in range(3):
        assert await queue.take("painter", timeout=1) is not None
    assert await raw.llen(doorbell_key("ferry", "painter")) == 0


async def test_take_and_peek_find_the_request_behind_more_timed_out_ones_than_one_script_fails(
    queue: RedisQueue,
) -> None:
    async def behind_timed_out_ones(text: str) -> tuple[list[str], str]:
        late = [
            await queue.submit(NewRequest("painter", "/", "{}", start_timeout_seconds=0.001))
            for _ in range(3 * scripts.HANDLED_PER_CALL)
        ]
        request_id = await queue.submit(job(text))
        await asyncio.sleep(0.05)
        return late, request_id

    late, first = await behind_timed_out_ones("1")
    claim = await queue.take("painter", timeout=0)
    assert claim is not None and claim.request_id == first
    more_late, second = await behind_timed_out_ones("2")
    assert await queue.peek("painter") == (second, job("2"))
    assert {(await queue.status(i)).failure for i in late + more_late} == {
        Failure("DEADLINE_EXCEEDED", "the request did not start within 0.001 s of its submit", "START_TIMEOUT")
    }


async def behind_unread_timed_out_ones(queue: RedisQueue) -> tuple[list[str], str, str]:
    """More requests past their start timeout than one script fails, none read since, then a NORMAL and a LOW one."""
    late = [
        await queue.submit(NewRequest("painter", "/", "{}", start_timeout_seconds=0.001))
        for _ in range(3 * scripts.HANDLED_PER_CALL)
    ]
    normal = await queue.submit(job())
    low = await queue.submit(NewRequest("painter", "/", "{}", priority=Priority.LOW))
    await asyncio.sleep(0.05)
    return late, normal, low


async def test_positions_leave_out_timed_out_requests_ahead_that_nobody_read(queue: RedisQueue) -> None:
    late, normal, low = await behind_unread_timed_out_ones(queue)
    assert [(await queue.status(i)).position for i in (normal, low)] == [0, 1]
    assert {(await queue.status(i)).state for i in late} == {State.COMPLETED}


async def test_depth_leaves_out_timed_out_requests_that_nobody_read(queue: RedisQueue) -> None:
    late, _, _ = await behind_unread_timed_out_ones(queue)
    assert await queue.depth("painter") == 2
    assert {(await queue.status(i)).state for i in late} == {State.COMPLETED}


# -- an entry read but never claimed ---------------------------------------------------------
# A replica reads and claims an entry in one script; a replica of an earlier version read first and
# claimed after, and one that died in between left the entry pending, unclaimed.


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


async def test_a_submit_sent_twice_queues_the_request_once(raw: redis.asyncio.Redis, queue: RedisQueue) -> None:
    submit = raw.register_script(scripts.SUBMIT)
    for _ in range(2):
        await submit(args=["ferry", "retried-id", "painter", "/", "{}", "", "1", "30.0", "30000", "salt"])
    assert await queue.depth("painter") == 1
    assert await raw.xlen(scripts.low_stream_key("ferry", "painter")) == 1
    assert await raw.llen(doorbell_key("ferry", "painter")) == 1


async def test_a_take_sent_twice_is_one_attempt_of_one_request_under_one_lease(
    raw: redis.asyncio.Redis, queue: RedisQueue
) -> None:
    normal = await queue.submit(job())
    low = await queue.submit(NewRequest("painter", "/", "{}", priority=Priority.LOW))
    take = raw.register_script(scripts.TAKE)
    arguments = ["ferry", "painter", "replica-x", 60_000, "lease-1", 3, 60_000, 1000, 0]
    first = await take(args=arguments)
    second = await take(args=arguments)
    # The same claim both times; only the wait it reports (its last field) grew meanwhile.
    assert first[:-1] == second[:-1] and first[:3] == [b"claimed", normal.encode(), 1]
    assert (await queue.status(normal)).attempt == 1
    assert (await queue.status(low)).state == State.QUEUED, "the second send took nothing more"
    assert await raw.llen(doorbell_key("ferry", "painter")) == 1, "nor another ring"
    assert await queue.renew(normal, "lease-1")
