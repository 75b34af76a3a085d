"""Reading a file under the data roots back, in chunks: the engine side of `Read`.

    async with aclosing(downloader.read(path, offset, length)) as parts:
        async for part in parts:   # one ReadHeader, then bytes…

The file's reader lock is held (shared) for the whole stream: eviction passes
over a file being read, and takes it once the reader has gone. Close the
stream (`aclosing`) so a caller that leaves early lets the lock go at once.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ferry.errors import InvalidArgument, NotFound
from ferry.services.downloader.locks import LockFiles, path_lock_key
from ferry.services.downloader.paths import DataRoots
from ferry.sizes import MESSAGE_BYTES


@dataclass(frozen=True)
class ReadHeader:
    file_size: int  # the whole file's, whatever range is read
    file_name: str
    content_type: str


async def read_file(
    roots: DataRoots, locks: LockFiles, requested: str, offset: int = 0, length: int | None = None
) -> AsyncGenerator[ReadHeader | bytes, None]:
    """The header, then the bytes from `offset` (to the end, or `length` of them) in chunks of at most 1 MiB."""
    path = roots.readable_file(requested)
    async with locks.hold(path_lock_key(path), shared=True):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # evicted or removed since the check above
            raise NotFound(f"no file at {requested!r}", reason="FILE_NOT_FOUND") from None
        try:
            size = os.fstat(fd).st_size
            if offset > size:
                raise InvalidArgument(f"offset {offset} is past the end ({size} bytes)", reason="BAD_RANGE")
            end = min(size, offset + length) if length is not None else size
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            yield ReadHeader(file_size=size, file_name=path.name, content_type=content_type)
            position = offset
            while position < end:
                chunk = await asyncio.to_thread(os.pread, fd, min(MESSAGE_BYTES, end - position), position)
                if not chunk:  # the file shrank under us: send what there is
                    break
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)
