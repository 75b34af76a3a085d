"""Single flight: concurrent requests for the same (target dir, URL) do the work once.

In one process, callers share one `Flight`. Across processes sharing the data
dir (replicas of `ferry serve downloader`), the flight's leader holds an
exclusive `flock` on the key's lock file while it writes; `Read` and the
evictor use the same lock files to avoid touching a file being written. flock
is polled without blocking so a waiting caller stays cancellable and never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

POLL_SECONDS = 0.02


def path_lock_key(path: str | Path) -> str:
    """The lock readers hold (shared) on a finished file, so eviction passes it by."""
    return "read-" + hashlib.sha256(str(path).encode()).hexdigest()


class LockFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _open(self, key: str) -> int:
        return os.open(self.folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)

    @asynccontextmanager
    async def hold(self, key: str, *, shared: bool = False) -> AsyncIterator[None]:
        """Hold the key's lock (exclusive unless `shared`), waiting as long as another holder has it."""
        fd = self._open(key)
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        try:
            while True:
                try:
                    fcntl.flock(fd, mode)
                    break
                except BlockingIOError:
                    await asyncio.sleep(POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def try_exclusive(self, key: str) -> int | None:
        """An fd holding the key's exclusive lock, or None when someone else holds it."""
        fd = self._open(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd
