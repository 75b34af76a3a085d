"""The distributed queue: Redis (>= 6.2) streams with a consumer group; replicas on any number of machines share it.

Each app's queued and running requests are entries of two streams (NORMAL, LOW) read by the group
`replicas`. `take` is one script: it takes over (XAUTOCLAIM, min idle = the lease) an entry whose
replica stopped renewing, else reads (XREADGROUP) the next NORMAL entry, else the next LOW one, and
claims it — so the choice by priority and the claim are one step. With nothing to take, a taker waits
on the app's doorbell list (BLPOP), which each submit rings once: one new request wakes one taker.
`renew` restarts an entry's idle clock with XCLAIM JUSTID. Every change of state is one Lua script
(redis_scripts.py, which also lays out the keys), so replicas racing for a request see it in exactly
one state, and a request's FINISHED event is written with its result. A queued request past its start
timeout fails as soon as anything reads it (`status`, a follower's idle poll, `depth`, a take or peek).
A cancel of a running request is published on a channel each replica subscribes to from `connect` on,
so the replica running it hears within milliseconds. Redis being down surfaces as Unavailable (reason
QUEUE_UNAVAILABLE) after a short retry; the cancel subscription reconnects by itself.

Durability is Redis's: with `appendonly yes` (and `appendfsync always` to lose not even the last second)
a restart of Redis loses no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from ferry.errors import NotFound, Unavailable
from ferry.inference.queue import redis_scripts as scripts
from ferry.inference.queue.base import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RESULT_TTL_SECONDS,
    FINISHED,
    MAX_EVENTS,
    Claim,
    Event,
    Failure,
    NewRequest,
    Priority,
    State,
    Status,
)
from ferry.inference.queue.redis_connection import REDIS_DOWN, cancels_kept, open_client, reachable

log = logging.getLogger(__name__)

# A waiting `take` looks for lapsed leases this often (at most half a lease), so a dead replica's request
# runs elsewhere within lease + 0.5 s; so does one whose doorbell ring went to a taker that stopped waiting.
# Measured with bench/queue.py (lease 2 s): at 1 s the worst of 5 reclaims reached 2.91 s, against a goal
# of lease + 1 s; each waiting slot runs one TAKE script per interval.
RECLAIM_POLL_SECONDS = 0.5
# A follower with nothing new checks this often whether its request ended or expired.
FOLLOW_POLL_SECONDS = 1.0
EVENTS_PER_READ = 200
# After the cancel subscription drops: subscribe again this soon, doubling up to the cap.
RESUBSCRIBE_FIRST_SECONDS, RESUBSCRIBE_CAP_SECONDS = 0.05, 2.0


class RedisQueue:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        where: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        result_ttl_seconds: float = DEFAULT_RESULT_TTL_SECONDS,
        key_prefix: str = "ferry",
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.result_ttl_seconds = result_ttl_seconds
        self.key_prefix = key_prefix
        self._client = client
        self._where = where
        # One consumer per queue object: the pending list says which replica holds what.
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lease_ms = _milliseconds(lease_seconds)
        self._ttl_ms = _milliseconds(result_ttl_seconds)
        self._reclaim_poll = min(RECLAIM_POLL_SECONDS, lease_seconds / 2)
        self._apps: set[str] = set()  # apps this replica took from: its consumer is forgotten there on close
        self._listeners: set[asyncio.Queue[str]] = set()
        self._relay: asyncio.Task[None] | None = None
        self._closed = False
        self._submit = client.register_script(scripts.SUBMIT)
        self._status = client.register_script(scripts.STATUS)
        self._peek = client.register_script(scripts.PEEK)
        self._depth = client.register_script(scripts.DEPTH)
        self._take = client.register_script(scripts.TAKE)
        self._renew = client.register_script(scripts.RENEW)
        self._finish = client.register_script(scripts.FINISH)
        self._release = client.register_script(scripts.RELEASE)
        self._cancel = client.register_script(scripts.CANCEL)
        self._append = client.register_script(scripts.APPEND)
        self._forget_consumer = client.register_script(scripts.FORGET_CONSUMER)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        password: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        result_ttl_seconds: float = DEFAULT_RESULT_TTL_SECONDS,
        key_prefix: str = "ferry",
    ) -> RedisQueue:
        """A queue on the Redis at `url`, subscribed to cancels; Unavailable if that Redis does not answer."""
        client, where = open_client(url, password)
        queue = cls(
            client,
            where,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            result_ttl_seconds=result_ttl_seconds,
            key_prefix=key_prefix,
        )
        try:
            with reachable(where):
                await client.ping()
                subscription = await queue._subscribe()
        except BaseException:
            await client.aclose()
            raise
        queue._relay = asyncio.create_task(queue._relay_cancellations(subscription))
        return queue

    async def _run(self, script: AsyncScript, *args: str | bytes | int) -> Any:
        with reachable(self._where):
            return await script(args=[self.key_prefix, *args])

    # -- requests ------------------------------------------------------------------------

    async def submit(self, request: NewRequest, request_id: str | None = None) -> str:
        request_id = request_id or uuid.uuid4().hex
        expires_in = "" if request.expires_in is None else str(request.expires_in)
        start_timeout = request.start_timeout_seconds
        # Its deadline in whole milliseconds (Redis's clock adds the now); an infinite one is no deadline.
        start_timeout_ms = (
            str(math.ceil(start_timeout * 1000)) if start_timeout is not None and math.isfinite(start_timeout) else ""
        )
        await self._run(
            self._submit,
            request_id,
            request.app_id,
            request.path,
            request.input_json,
            expires_in,
            str(int(request.priority)),
            "" if start_timeout is None else repr(start_timeout),
            start_timeout_ms,
            request.output_salt,
            request.trace_parent,
        )
        return request_id

    async def status(self, request_id: str) -> Status:
        # A queued request past its start timeout fails here, as a take would fail it: every reader (a follower's
        # idle poll, `events`, the positions behind it) sees it failed, though no replica is taking.
        while True:
            found = await self._run(self._status, request_id, self._ttl_ms, MAX_EVENTS)
            if found != [b"more"]:  # 'more': it failed a batch of those, and more may be left
                break
        if found is None:
            raise NotFound(f"no request {request_id[:100]!r}", reason="UNKNOWN_REQUEST")
        position, flat = found
        record = dict(zip(flat[::2], flat[1::2], strict=True))
        failure = None
        if code := record.get(b"failure_code", b"").decode():
            failure = Failure(code, record[b"failure_message"].decode(), record[b"failure_reason"].decode())
        return Status(
            request_id,
            record[b"app_id"].decode(),
            State(record[b"state"].decode()),
            int(position),
            int(record[b"attempt"]),
            record.get(b"output_json", b"").decode(),
            failure,
        )

    async def peek(self, app_id: str) -> tuple[str, NewRequest] | None:
        while True:
            found = await self._run(self._peek, app_id, self._ttl_ms, MAX_EVENTS)
            if found is None:
                return None
            if found != [b"more"]:
                request_id, _, *fields, _waited_ms = found
                return request_id.decode(), _request(app_id, *fields)

    async def depth(self, app_id: str) -> int:
        while True:
            # -1: it failed a batch of requests past their start timeout, and more may be left.
            queued = int(await self._run(self._depth, app_id, self._ttl_ms, MAX_EVENTS))
            if queued >= 0:
                return queued

    async def take(self, app_id: str, timeout: float) -> Claim | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._apps.add(app_id)
        rang = False  # woken by the doorbell: the ring this take consumed stands for a request
        while True:
            lease = uuid.uuid4().hex
            outcome = await self._run(
                self._take,
                app_id,
                self._consumer,
                self._lease_ms,
                lease,
                self.max_attempts,
                self._ttl_ms,
                MAX_EVENTS,
                int(rang),
            )
            if outcome[0] == b"claimed":
                request_id, attempt, *fields, waited_ms = outcome[1:]
                waited = max(0, int(waited_ms)) / 1000 if waited_ms else None
                return Claim(request_id.decode(), _request(app_id, *fields), int(attempt), lease, waited)
            if outcome[0] == b"more":  # it stopped after a run of dead entries: there may be work behind them
                continue
            left = deadline - loop.time()
            if left <= 0:
                return None
            rang = await self._wait_for_ring(app_id, min(left, self._reclaim_poll))

    async def _wait_for_ring(self, app_id: str, seconds: float) -> bool:
        """Whether a submit rang the app's doorbell for this taker within `seconds`."""
        doorbell = scripts.doorbell_key(self.key_prefix, app_id)
        with reachable(self._where):
            # At least 1 ms: a timeout Redis reads as 0 would wait forever.
            rung = await self._client.blpop([doorbell], timeout=max(seconds, 0.001))  # type: ignore[misc]  # typed for the sync client too
        return rung is not None

    async def renew(self, request_id: str, lease: str) -> bool:
        return bool(await self._run(self._renew, request_id, lease, self._consumer))

    async def finish(self, request_id: str, lease: str, output_json: str = "", failure: Failure | None = None) -> bool:
        code, message, reason = (failure.code, failure.message, failure.reason) if failure else ("", "", "")
        finished = await self._run(
            self._finish, request_id, lease, output_json, code, message, reason, self._ttl_ms, MAX_EVENTS
        )
        return bool(finished)

    async def release(self, request_id: str, lease: str) -> bool:
        released = await self._run(self._release, request_id, lease, self._consumer, _milliseconds(self.lease_seconds))
        return bool(released)

    async def cancel(self, request_id: str) -> tuple[State, bool]:
        outcome = await self._run(self._cancel, request_id, self._ttl_ms, MAX_EVENTS)
        if outcome is None:
            raise NotFound(f"no request {request_id[:100]!r}", reason="UNKNOWN_REQUEST")
        previous, cancelled = outcome
        return State(previous.decode()), bool(cancelled)

    # -- cancellations -------------------------------------------------------------------

    async def cancellations(self) -> AsyncIterator[str]:
        heard: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.add(heard)
        try:
            while True:
                yield await heard.get()
        finally:
            self._listeners.discard(heard)

    async def _subscribe(self) -> PubSub:
        subscription = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            with cancels_kept():
                await subscription.subscribe(scripts.cancelled_channel(self.key_prefix))
        except BaseException:
            await _close_quietly(subscription)
            raise
        return subscription

    async def _relay_cancellations(self, subscription: PubSub | None) -> None:
        """Hands each cancel published on the channel to every `cancellations()` iterator, for the queue's life.

        While Redis is away cancels are not heard here; a replica running a request cancelled meanwhile
        learns of it when its next `renew` fails.
        """
        pause = RESUBSCRIBE_FIRST_SECONDS
        try:
            while True:
                try:
                    if subscription is None:
                        subscription = await self._subscribe()
                        log.info("subscribed to cancels again (%s)", self._where)
                    pause = RESUBSCRIBE_FIRST_SECONDS
                    while True:
                        with cancels_kept():  # close() cancels this loop and waits for it to end
                            message = await subscription.get_message(timeout=FOLLOW_POLL_SECONDS)
                        if message is not None and message["type"] == "message":
                            for listener in self._listeners:
                                listener.put_nowait(message["data"].decode())
                except REDIS_DOWN as error:
                    log.warning("cancel subscription lost (%s): %s; retrying in %.2f s", self._where, error, pause)
                    if subscription is not None:
                        await _close_quietly(subscription)
                        subscription = None
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, RESUBSCRIBE_CAP_SECONDS)
        finally:
            if subscription is not None:
                await _close_quietly(subscription)

    # -- events --------------------------------------------------------------------------

    async def append(self, request_id: str, kind: str, data: bytes) -> None:
        await self._run(self._append, request_id, kind, data, MAX_EVENTS)

    async def events(self, request_id: str) -> list[Event]:
        await self.status(request_id)  # NotFound for an unknown request
        with reachable(self._where):
            entries = await self._client.xrange(scripts.events_key(self.key_prefix, request_id))
        return [_event(entry_id, fields) for entry_id, fields in entries]

    async def follow(self, request_id: str, after: int = 0) -> AsyncIterator[Event]:
        await self.status(request_id)  # NotFound for an unknown request, before anything is yielded
        log_key = scripts.events_key(self.key_prefix, request_id)
        ended = False  # the request completed: what is left to read is already written
        while True:
            block_ms = None if ended else int(FOLLOW_POLL_SECONDS * 1000)
            with reachable(self._where):
                reply = await self._client.xread({log_key: f"0-{after}"}, count=EVENTS_PER_READ, block=block_ms)
            entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
            for entry_id, fields in entries:
                event = _event(entry_id, fields)
                yield event
                if event.kind == FINISHED:
                    return
                after = event.seq
            if not entries:
                if ended:
                    return  # `after` was at or past FINISHED
                ended = (await self.status(request_id)).state == State.COMPLETED  # NotFound once expired

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
            self._relay = None
        try:
            for app_id in sorted(self._apps):
                await self._run(self._forget_consumer, app_id, self._consumer)
        except Unavailable as error:  # its consumer stays in the group, holding nothing: harmless
            log.warning("closing the queue: %s", error)
        finally:
            await self._client.aclose()


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _request(
    app_id: str,
    path: bytes,
    input_json: bytes,
    expires_in: bytes,
    priority: bytes,
    start_timeout: bytes,
    output_salt: bytes,
    trace_parent: bytes,
) -> NewRequest:
    """A request as the scripts describe it (redis_scripts.py's `described`)."""
    return NewRequest(
        app_id,
        path.decode(),
        input_json.decode(),
        int(expires_in) if expires_in else None,
        Priority(int(priority)),
        float(start_timeout) if start_timeout else None,
        output_salt.decode(),
        trace_parent.decode(),
    )


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    """A log entry: its stream id is 0-<seq>."""
    return Event(int(entry_id.split(b"-")[1]), fields[b"kind"].decode(), fields[b"data"])


async def _close_quietly(subscription: PubSub) -> None:
    with contextlib.suppress(*REDIS_DOWN):
        await subscription.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
