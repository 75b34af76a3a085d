"""Bytes arriving from a client stream, landed in a temp file off the event loop and hashed on the way.

The file lives under the data dir's `.ferry/incoming/`, on the same filesystem
as local storage, so storing it is a rename. Whatever happens, `discard`
leaves nothing behind: a client that dies mid-stream leaves no object.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from concurrent.futures import Executor
from pathlib import Path

from ferry.errors import InvalidArgument, ResourceExhausted


class IncomingFile:
    def __init__(
        self, folder: Path, executor: Executor, *, limit: int, declared_size: int | None = None, hashed: bool = True
    ) -> None:
        """`hashed=False` for a multipart part: storage hashes the whole, so a part's own hash is wasted CPU."""
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{secrets.token_hex(12)}.incoming"
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in finish/discard)
        self._hash = hashlib.sha256() if hashed else None
        self._executor = executor
        self._limit = limit
        self._declared = declared_size
        self.size = 0

    def _write(self, chunk: bytes) -> None:
        if self._hash is not None:
            self._hash.update(chunk)
        self._file.write(chunk)

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise ResourceExhausted(f"more than the {self._limit}-byte cap arrived", reason="TOO_LARGE")
        if self._declared is not None and self.size > self._declared:
            raise InvalidArgument(f"more than the declared {self._declared} bytes arrived", reason="SIZE_MISMATCH")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, chunk)

    async def finish(self) -> str:
        """Close the file; returns its sha256 (hex; "" when not hashed). The caller then stores and discards it."""
        if self._declared is not None and self.size != self._declared:
            raise InvalidArgument(f"{self.size} bytes arrived, {self._declared} were declared", reason="SIZE_MISMATCH")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._file.close)
        return self._hash.hexdigest() if self._hash is not None else ""

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
