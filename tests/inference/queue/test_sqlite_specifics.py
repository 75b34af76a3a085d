"""What only the SQLite queue does; what every queue promises is test_contract.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ferry.inference.queue.sqlite import SqliteQueue
from tests.inference.queue.test_contract import job


async def test_a_claim_the_database_refuses_is_tried_again_while_the_takers_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await SqliteQueue.open(tmp_path / "queue.sqlite3")
    refused: list[str] = []
    claim_step = queue._claim

    def refuse_once(db: sqlite3.Connection, **arguments: Any) -> Any:
        if not refused:
            refused.append(arguments["app_id"])
            raise sqlite3.OperationalError("disk I/O error")
        return claim_step(db, **arguments)

    monkeypatch.setattr(queue, "_claim", refuse_once)
    try:
        request_id = await queue.submit(job())
        claim = await queue.take("painter", timeout=5)
        assert claim is not None and claim.request_id == request_id
        assert refused == ["painter"]
        assert "cannot claim requests of painter (disk I/O error)" in caplog.text
    finally:
        await queue.close()
