"""What only the SQLite queue does; what every queue promises is test_contract.py.

Its database failing is a real lock here: another connection holds the write
lock past the queue's busy timeout (shortened to 50 ms), as a stuck process
sharing the file would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ferry.errors import Unavailable
from ferry.inference.queue.sqlite import SqliteQueue
from tests.harness import until
from tests.inference.queue.test_contract import job


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SqliteQueue]:
    queue = await SqliteQueue.open(tmp_path / "queue.sqlite3")
    await queue._run(lambda: queue._connected().execute("PRAGMA busy_timeout=50"))
    yield queue
    await queue.close()


@pytest.fixture
def other_process(queue: SqliteQueue) -> Iterator[sqlite3.Connection]:
    """Another connection to the queue's file, as another process sharing it would have."""
    connection = sqlite3.connect(queue.path, isolation_level=None)
    yield connection
    connection.close()


async def test_a_locked_database_is_unavailable_and_serves_again_once_the_lock_is_gone(
    queue: SqliteQueue, other_process: sqlite3.Connection
) -> None:
    other_process.execute("BEGIN EXCLUSIVE")
    with pytest.raises(Unavailable) as refused:
        await queue.submit(job())
    assert refused.value.reason == "QUEUE_UNAVAILABLE"
    assert "the request queue (queue.sqlite3) is unavailable: database is locked" in str(refused.value)

    other_process.execute("ROLLBACK")
    assert (await queue.status(await queue.submit(job()))).app_id == "painter"


async def test_a_claim_the_database_refuses_is_tried_again_while_the_takers_wait(
    queue: SqliteQueue, other_process: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    request_id = await queue.submit(job())
    other_process.execute("BEGIN EXCLUSIVE")
    taking = asyncio.create_task(queue.take("painter", timeout=10))
    await until(lambda: "cannot claim requests of painter" in caplog.text, "a refused claim")
    other_process.execute("ROLLBACK")

    claim = await taking
    assert claim is not None and claim.request_id == request_id
    assert "database is locked" in caplog.text
