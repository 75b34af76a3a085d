"""The contract suite's backends: a fresh SQLite file, or a fresh key prefix on a real redis-server.

`replicas(**settings)` opens another queue object on the same store — what a
second replica (another process, another machine) would hold.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.inference.queue.base import RequestQueue
from ferry.inference.queue.sqlite import SqliteQueue

OpenReplica = Callable[..., Awaitable[RequestQueue]]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    from tests.redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenReplica]:
    opened: list[RequestQueue] = []
    if request.param == "sqlite":
        path = tmp_path / "queue.sqlite3"

        async def open_replica(**settings: Any) -> RequestQueue:
            opened.append(await SqliteQueue.open(path, **settings))
            return opened[-1]

    else:
        from ferry.inference.queue.redis import RedisQueue

        url, prefix = request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex[:8]}"

        async def open_replica(**settings: Any) -> RequestQueue:
            opened.append(await RedisQueue.connect(url, key_prefix=prefix, **settings))
            return opened[-1]

    yield open_replica
    for queue in opened:
        await queue.close()


@pytest.fixture
async def queue(replicas: OpenReplica) -> RequestQueue:
    return await replicas()
