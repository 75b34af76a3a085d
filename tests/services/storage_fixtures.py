"""Storage under test as users reach it: local storage served by a real CDN on a free loopback port,
a clock the test turns instead of waiting for objects to expire, and files handed in as the encoder hands them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ferry.services.storage.base import NewObject, Storage, StoredObject
from ferry.services.storage.cdn import create_cdn_app
from ferry.services.storage.local import LocalStorage
from tests.harness import serve_on_loopback


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
    runner, base_url = await serve_on_loopback(create_cdn_app(None, storage))
    try:
        yield storage
    finally:
        await runner.cleanup()


def a_file(folder: Path, data: bytes, name: str = "upload.incoming") -> Path:
    """`data` as a finished file in `folder`, the way an upload reaches storage."""
    path = folder / name
    path.write_bytes(data)
    return path


async def put(storage: Storage, tmp_path: Path, data: bytes, **options: Any) -> StoredObject:
    """`data` stored from a file, as out.png, image/png, kept forever, unless `options` say otherwise."""
    options = {"file_name": "out.png", "content_type": "image/png", "expires_in": None, **options}
    return await storage.put_file(a_file(tmp_path, data), NewObject(**options), hashlib.sha256(data).hexdigest())


async def send_part(storage: Storage, tmp_path: Path, upload_id: str, number: int, data: bytes) -> str:
    """Part `number` of a multipart upload, from a file; its etag."""
    return await storage.put_part(upload_id, number, a_file(tmp_path, data, f"part-{number}.incoming"))
