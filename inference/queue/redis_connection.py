"""Opening the Redis client from a queue URL; Redis being down reported as ferry's Unavailable, and a
cancel redis-py swallowed raised again.

`redis://[:PASSWORD@]HOST:PORT/DB` or `rediss://…` (TLS; the system's CAs are trusted unless the URL's
`?ssl_ca_certs=/path/ca.pem` names another). A password given apart from the URL (FERRY_QUEUE_PASSWORD)
wins over one inside it, so a secret need not sit in a URL that is logged or shown in a process list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from ferry.errors import InvalidArgument, Unavailable

# A command's reply (scripts run in milliseconds; a blocking read asks for at most READ_BLOCK_SECONDS).
SOCKET_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 2.0
# Redis blips (a failover, a restart) are retried briefly, then the caller gets UNAVAILABLE and its own
# retries apply: 3 tries, 50 ms doubling to at most 0.5 s apart.
RETRY = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3)
# What a command raises when Redis is unreachable, refuses our password, is loading its data, is a
# read-only replica after a failover, or is out of memory: each means "the queue is down, try later".
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    OSError,
)


def open_client(url: str, password: str | None = None) -> tuple[redis.asyncio.Redis, str]:
    """A client for `url` (nothing is connected yet), and where it points, fit for messages (no password)."""
    if not url.startswith(("redis://", "rediss://")):
        raise InvalidArgument("a Redis queue URL starts with redis:// or rediss://", reason="BAD_QUEUE_URL")
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError as error:
        raise InvalidArgument(f"bad Redis queue URL: {error}", reason="BAD_QUEUE_URL") from None
    if password is not None:
        options["password"] = password
    # Settings the URL's query (?socket_timeout=…) names win over these.
    defaults = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "retry": RETRY,
    }
    pool = ConnectionPool(**{**defaults, **options})
    try:
        # Builds, does not connect: an option the connection does not take fails now, not at the first command.
        pool.make_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except TypeError as error:
        raise InvalidArgument(f"bad Redis queue URL option: {str(error)[:200]}", reason="BAD_QUEUE_URL") from None
    where = f"{'rediss' if url.startswith('rediss') else 'redis'}://{options.get('host', 'localhost')}"
    where += f":{options.get('port', 6379)}/{options.get('db', 0)}"
    return redis.asyncio.Redis.from_pool(pool), where


@contextmanager
def reachable(where: str) -> Iterator[None]:
    """Turns Redis being down into Unavailable (reason QUEUE_UNAVAILABLE), never a raw redis exception; and
    keeps the cancels of the commands it wraps (`cancels_kept`)."""
    try:
        with cancels_kept():
            yield
    except REDIS_DOWN as error:
        raise Unavailable(
            f"the request queue ({where}) is unavailable: {str(error)[:200]}", reason="QUEUE_UNAVAILABLE"
        ) from error


@contextmanager
def cancels_kept() -> Iterator[None]:
    """Raise CancelledError where a cancel asked for during the block did not end it.

    redis-py (6.4) sends each command under `asyncio.wait_for` when socket_timeout is set, and on Python 3.11
    wait_for returns normally when a cancel arrives in the tick its send completes: the cancel is lost and
    the caller's loop runs on (a follower whose Stream caller had left kept its request running to the end).
    A cancel delivered as usual raises inside the block and passes through; this adds only the lost ones.
    """
    task = asyncio.current_task()
    asked = 0 if task is None else task.cancelling()
    yield
    if task is not None and task.cancelling() > asked:
        raise asyncio.CancelledError
