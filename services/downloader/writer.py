"""Atomic file writes for downloads: `ferry.atomic_files`' temp beside the target, fsync, rename, with
the bytes written as they arrive.

Nothing partial is ever visible under the target name, whatever fails or is
cancelled. Writing happens off the event loop, one block at a time, while the
loop keeps receiving the next block (two blocks in memory at most), so memory
stays flat whatever the file size. The temp file is opened before the file's
name is known (the server names it in its answer), so it is named after the
flight's key instead, which also lets the next holder of the key's lock sweep
what a crashed flight left.

A file downloaded in byte ranges at once is sized up front (`allocate`) and
written by one `Span` per range, each at its own offset with `os.pwrite`, on
the same terms: off the loop, two blocks in memory at most per span.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ferry import atomic_files
from ferry.atomic_files import CANNOT_LINK, PART_SUFFIX, PendingFile


def part_prefix(key: str) -> str:
    """Temp files of one flight start with this, so the next holder of its lock can sweep leftovers."""
    return f".{key}."


def temp_name(folder: Path, key: str) -> Path:
    return folder / f"{part_prefix(key)}{secrets.token_hex(6)}{PART_SUFFIX}"


def link_into_place(source: Path, folder: Path, key: str, target: Path) -> bool:
    """Make `target` a hard link to `source`, appearing whole (a temp link beside it, then `os.replace`).

    False when no link can be made here (another filesystem, no hard links): the caller copies instead.
    Run it off the event loop.
    """
    try:
        atomic_files.link_into_place(source, target, temp_name(folder, key))
    except OSError as error:
        if error.errno in CANNOT_LINK:
            return False
        raise
    return True


def _write_block_at(fd: int, offset: int, pieces: list[bytes]) -> None:
    for piece in pieces:
        view = memoryview(piece)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    # Flushing each block while the next one downloads leaves the final fsync
    # almost nothing to do (bench/download.py: ~1.2x faster end to end than
    # one fsync of the whole file at the end).
    os.fdatasync(fd)


def _allocate(fd: int, size: int) -> None:
    try:
        # Reserves the blocks: a disk too small fails here, before any byte is fetched.
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system that cannot reserve: a sparse file of the right size


class Span:
    """Bytes written into a file from `offset` on, as they arrive: the whole file as one stream, or one range
    of a ranged download.

    `size` counts the bytes handed to it, written or still buffered; a write that failed raises on the next
    `write` or `drain`."""

    def __init__(self, fd: int, offset: int, block_size: int) -> None:
        self._fd = fd
        self._next_offset = offset
        self._block_size = block_size
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._writing: asyncio.Future[None] | None = None
        self.size = 0

    async def write(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._buffered += len(piece)
        self.size += len(piece)
        if self._buffered >= self._block_size:
            await self._flush_block()

    async def _flush_block(self) -> None:
        if self._writing is not None:
            # Shielded: a range cancelled here must not cancel the write's task while its thread runs on,
            # or `settle` would find it done and let the fd close under the thread.
            await asyncio.shield(self._writing)
        pieces, offset, self._pieces = self._pieces, self._next_offset, []
        self._next_offset += self._buffered
        self._buffered = 0
        self._writing = asyncio.ensure_future(asyncio.to_thread(_write_block_at, self._fd, offset, pieces))

    async def drain(self) -> None:
        """Every byte handed over is written."""
        if self._pieces:
            await self._flush_block()
        if self._writing is not None:
            await asyncio.shield(self._writing)
            self._writing = None

    async def settle(self) -> None:
        """Wait for a write in flight, whatever its outcome: its thread must be done before the fd closes."""
        if self._writing is not None:
            await asyncio.wait([self._writing])  # unlike gather, never cancels what it waits for
            if not self._writing.cancelled():
                self._writing.exception()  # seen: a range that failed has its own error to report, or none is due
            self._writing = None


class AtomicFile:
    def __init__(self, folder: Path, key: str, block_size: int) -> None:
        self._pending = PendingFile(temp_name(folder, key))
        # Written through the descriptor from worker threads (never through the buffered file object).
        self._fd = self._pending.file.fileno()
        self._block_size = block_size
        self._stream = Span(self._fd, 0, block_size)  # the bytes as they arrive, one after another
        self._spans = [self._stream]  # every writer of this file: each must settle before the fd closes
        self.size = 0

    async def write(self, piece: bytes) -> None:
        await self._stream.write(piece)
        self.size += len(piece)

    async def fill(self, produce: Callable[[BinaryIO], int]) -> None:
        """Let `produce` write into the temp file from a worker thread (CPU-bound producers: decoders)."""
        await self._stream.drain()

        def run() -> int:
            with os.fdopen(os.dup(self._fd), "wb") as file:
                file.seek(self.size)  # after what the stream wrote (at offsets: the file position never moved)
                return produce(file)

        self.size += await asyncio.to_thread(run)

    async def allocate(self, size: int) -> None:
        """Size the empty file to `size` bytes, for `Span`s to fill at their offsets."""
        await asyncio.to_thread(_allocate, self._fd, size)
        self.size = size

    def span(self, offset: int, block_size: int) -> Span:
        """A writer of the bytes from `offset` on (the file is `allocate`d first)."""
        span = Span(self._fd, offset, block_size)
        self._spans.append(span)
        return span

    async def _settle(self) -> None:
        for span in self._spans:
            await span.settle()

    async def truncate(self) -> None:
        """Start over (the source could not resume)."""
        await self._settle()
        await asyncio.to_thread(os.ftruncate, self._fd, 0)
        self._stream = Span(self._fd, 0, self._block_size)
        self._spans = [self._stream]
        self.size = 0

    async def commit(self, target: Path) -> Path:
        """Flush, fsync and move into place under `target`; the temp file is gone afterwards."""
        await self._stream.drain()
        await asyncio.to_thread(self._pending.sync)
        return self._pending.commit(target)

    async def discard(self) -> None:
        """Drop the temp file. Safe in any state, including after commit or mid-cancellation: every write in
        flight finishes first, as closing its fd under its thread could let a later open() reuse the number
        mid-write."""
        await self._settle()
        self._pending.discard()
