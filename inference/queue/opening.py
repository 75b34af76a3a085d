"""The queue `--queue` names: Redis for replicas on many machines, else the SQLite file under the data dir."""

from __future__ import annotations

from pathlib import Path

from ferry.inference.queue.base import RequestQueue
from ferry.inference.queue.sqlite import SqliteQueue
from ferry.services.config import InferenceConfig

SQLITE_NAME = "queue.sqlite3"


async def open_queue(config: InferenceConfig, data_dir: Path) -> RequestQueue:
    lease, attempts, ttl = config.lease_seconds, config.max_attempts, config.result_ttl_seconds
    if config.queue is None:
        path = data_dir / SQLITE_NAME
        return await SqliteQueue.open(path, lease_seconds=lease, max_attempts=attempts, result_ttl_seconds=ttl)
    from ferry.inference.queue.redis import RedisQueue  # the redis package is only needed for a Redis queue

    return await RedisQueue.connect(
        config.queue,
        password=config.queue_password,
        lease_seconds=lease,
        max_attempts=attempts,
        result_ttl_seconds=ttl,
    )
