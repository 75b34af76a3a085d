"""Storage under test as users reach it: local storage served by a real CDN on a free loopback port,
and a clock the test turns instead of waiting for objects to expire."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from ferry.services.storage.cdn import create_cdn_app
from ferry.services.storage.local import LocalStorage


class TurnedClock:
    """A storage `clock` that stands still at the moment it was made until the test turns it forward."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def turn(self, seconds: float) -> datetime:
        """Move the time on by `seconds`; the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now


@asynccontextmanager
async def served_local_storage(root: Path, **options: Any) -> AsyncIterator[LocalStorage]:
    """LocalStorage at `root` (its `files` folder), its URLs answered by the CDN until the block ends."""
    base_url = ""
    storage = LocalStorage(root, lambda: base_url, **options)
    runner = web.AppRunner(create_cdn_app(None, storage), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield storage
    finally:
        await runner.cleanup()
