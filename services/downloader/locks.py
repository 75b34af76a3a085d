"""Single flight: concurrent requests for the same (target dir, URL) do the work once.

In one process, callers share one `Flight`. Across processes sharing the data
dir (replicas of `ferry serve downloader`), the flight's leader holds an
exclusive `flock` on the key's lock file while it writes; `Read` and the
evictor use the same lock files to avoid touching a file being written. flock
is polled without blocking so a waiting caller stays cancellable and never
blocks the event loop.

Lock files are removed once they guard nothing (a download's with the
download, a reader's when its last reader leaves), by a process holding them
exclusively. Whoever was waiting on the removed file then holds a lock on a
file no one else can find, so every locker checks, once it holds the lock,
that its file is still the one at the path, and starts over when it is not.
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
SUFFIX = ".lock"


def path_lock_key(path: str | Path) -> str:
    """The lock readers hold (shared) on a finished file, so eviction passes it by."""
    return "read-" + hashlib.sha256(str(path).encode()).hexdigest()


class HeldLock:
    """A lock `LockFiles.hold` holds; `remove_on_release` drops its file when it is let go."""

    def __init__(self) -> None:
        self.remove = False

    def remove_on_release(self) -> None:
        self.remove = True


class LockFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def _open(self, key: str) -> int:
        return os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o644)

    def _still_there(self, key: str, fd: int) -> bool:
        """Whether the file `fd` locks is still the key's lock file (not removed, or removed and made anew)."""
        try:
            on_disk = os.stat(self._path(key))
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    @asynccontextmanager
    async def hold(self, key: str, *, shared: bool = False) -> AsyncIterator[HeldLock]:
        """Hold the key's lock (exclusive unless `shared`), waiting as long as another holder has it.

        A shared lock's file is removed when its last holder leaves: readers' locks guard nothing after.
        """
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        while True:
            fd = self._open(key)
            try:
                while True:
                    try:
                        fcntl.flock(fd, mode)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(POLL_SECONDS)
            except BaseException:
                os.close(fd)
                raise
            if self._still_there(key, fd):
                break
            os.close(fd)  # its holder removed it while we waited: lock the one there now
        held = HeldLock()
        try:
            yield held
        finally:
            if shared:
                self._remove_if_unused(key, fd)
            elif held.remove:
                self._path(key).unlink(missing_ok=True)
            os.close(fd)  # closing releases the lock

    def _remove_if_unused(self, key: str, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another reader still holds it
        if self._still_there(key, fd):
            self._path(key).unlink(missing_ok=True)

    def try_exclusive(self, key: str) -> int | None:
        """An fd holding the key's exclusive lock, or None when someone else holds it."""
        while True:
            fd = self._open(key)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if self._still_there(key, fd):
                return fd
            os.close(fd)

    def discard(self, key: str, fd: int) -> None:
        """Remove the key's lock file and let the lock go; `fd` holds it exclusively (from `try_exclusive`)."""
        self._path(key).unlink(missing_ok=True)
        os.close(fd)

    def keys(self) -> list[str]:
        """Every key that has a lock file now."""
        return [path.name.removesuffix(SUFFIX) for path in self.folder.glob(f"*{SUFFIX}")]
