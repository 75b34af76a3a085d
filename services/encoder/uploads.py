"""Files a client uploads, whole or in parts, into storage: the engine side of Upload and the multipart RPCs.

What an uploader says about its file (content type, name) is checked before a
byte is received: it becomes HTTP (a Content-Type header, a URL segment). The
bytes land in a temp file off the event loop (incoming.py); whatever happens,
the temp file goes, and a client that dies mid-stream leaves no object.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import InvalidArgument
from ferry.services.encoder.file_names import upload_name
from ferry.services.encoder.incoming import IncomingFile
from ferry.services.storage.base import NewObject, Storage, StoredObject, check_part_number
from ferry.services.storage.media_types import check_content_type


@dataclass(frozen=True)
class UploadHeader:
    file_name: str = ""  # "": one is made from the content type
    content_type: str = ""  # "": guessed from the name
    file_size: int | None = None  # declared: more or fewer bytes are refused


@dataclass(frozen=True)
class UploadedPart:
    part_number: int
    etag: str
    size: int


class Uploads:
    """`limit` bounds each upload and each part, in bytes; `incoming` is where their bytes land meanwhile."""

    def __init__(self, storage: Storage, incoming: Path, executor: Executor, limit: int) -> None:
        self.storage = storage
        self.incoming = incoming
        self.executor = executor
        self.limit = limit

    async def upload(self, header: UploadHeader, chunks: AsyncIterator[bytes], expires_in: int | None) -> StoredObject:
        """One file, streamed in whole, stored under its (checked) name and content type."""
        content_type = _content_type(header.content_type, header.file_name)
        name = upload_name(header.file_name, content_type)
        async with self._received(chunks, header.file_size) as (incoming, sha256):
            return await self.storage.put_file(incoming.path, NewObject(name, content_type, expires_in), sha256)

    async def create(self, file_name: str, content_type: str, expires_in: int | None) -> str:
        """A multipart upload started; returns its id. The object's lifetime counts from completion."""
        checked = _content_type(content_type, file_name)
        name = upload_name(file_name, checked)
        return await self.storage.create_multipart(file_name=name, content_type=checked, expires_in=expires_in)

    async def put_part(self, upload_id: str, part_number: int, chunks: AsyncIterator[bytes]) -> UploadedPart:
        check_part_number(part_number)
        # Unhashed: storage hashes the assembled whole, so a part's own hash would be wasted CPU.
        async with self._received(chunks, None, hashed=False) as (incoming, _):
            etag = await self.storage.put_part(upload_id, part_number, incoming.path)
        return UploadedPart(part_number, etag, incoming.size)

    async def complete(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> StoredObject:
        """The named parts, as (part number, etag) in any order, assembled into one stored object."""
        if not parts:
            raise InvalidArgument("a multipart upload needs at least one part", reason="NO_PARTS")
        return await self.storage.complete_multipart(upload_id, sorted(parts))

    async def abort(self, upload_id: str) -> None:
        await self.storage.abort_multipart(upload_id)

    @asynccontextmanager
    async def _received(
        self, chunks: AsyncIterator[bytes], declared: int | None, *, hashed: bool = True
    ) -> AsyncIterator[tuple[IncomingFile, str]]:
        """The stream's bytes in a temp file and its sha256, for the block to store; the file goes when it ends."""
        incoming = IncomingFile(self.incoming, self.executor, limit=self.limit, declared_size=declared, hashed=hashed)
        try:
            async for chunk in chunks:
                await incoming.write(chunk)
            yield incoming, await incoming.finish()
        finally:
            incoming.discard()


def _content_type(declared: str, file_name: str) -> str:
    """The caller's content type, checked (it becomes a header), else one guessed from the name."""
    if declared:
        return check_content_type(declared)
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"
