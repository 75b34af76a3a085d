"""URLs of files this stack stored itself, read from its storage instead of over HTTP.

Uploads and encoded outputs get URLs of the local CDN or of the S3 bucket the
stack writes to, and those URLs come back as inputs (`ferry upload` then
`ferry run`, one app's output fed to another). The network guard keeps the
downloader out of private networks, which is exactly where the stack's own CDN
usually is. So where this downloader can reach the storage that issued a URL
(the same process, or the same S3 configuration), the storage resolves it:
no HTTP round trip and no guard decision, and a local object is linked into
place rather than copied.

Which URLs are the stack's own is decided from the URL alone, as the storage
would serve it: under the local CDN's base URL (scheme, host, port, path),
`files/<id>/<name>`; for S3, a presigned URL whose signature this storage's
credentials made, or a key under its public base URL. Such a URL naming no
live object (unknown, expired, any other path under the CDN) is NOT_FOUND, as
the CDN or S3 would answer. Every other URL goes to the network as before.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ferry.errors import NotFound, Unavailable
from ferry.services.storage.base import Storage, TransientStorageError
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.local import LocalStorage

if TYPE_CHECKING:
    from ferry.services.storage.s3 import S3Storage


@dataclass(frozen=True)
class OwnFile:
    """A live object of the stack's storage. Objects never change under their URL: same URL, same bytes."""

    file_name: str
    content_type: str
    size: int
    path: Path | None = None  # on this machine's disk: linked into place
    blocks: Callable[[], AsyncGenerator[bytes, None]] | None = None  # elsewhere: streamed


class OwnSource(Protocol):
    def claims(self, url: str) -> bool:
        """Whether `url` is one this storage issued (decided from the URL alone, without I/O)."""

    async def find(self, url: str) -> OwnFile:
        """The live object `url` names; NotFound when there is none."""


def _not_found() -> NotFound:
    return NotFound("no stored file at this URL (unknown, or expired)", reason="OBJECT_NOT_FOUND")


class LocalObjects:
    """The local storage the embedded CDN serves, read from disk."""

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage

    def claims(self, url: str) -> bool:
        return self._storage.claims(url)

    async def find(self, url: str) -> OwnFile:
        stored = await self._storage.find_url(url, self._storage.clock())
        if stored is None:
            raise _not_found()
        return OwnFile(stored.file_name, stored.content_type, stored.size, path=self._storage.path_of(stored))


class BucketObjects:
    """An S3 bucket the stack writes to, read with the storage's own client."""

    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage

    def claims(self, url: str) -> bool:
        return self._storage.key_of(url, self._storage.clock()) is not None

    async def find(self, url: str) -> OwnFile:
        key = self._storage.key_of(url, self._storage.clock())
        if key is None:
            raise _not_found()
        try:
            stored = await self._storage.find(key, self._storage.clock())
        except TransientStorageError as error:
            raise _storage_down(error) from error
        if stored is None:
            raise _not_found()
        return OwnFile(stored.file_name, stored.content_type, stored.size, blocks=lambda: self._blocks(key))

    async def _blocks(self, key: str) -> AsyncGenerator[bytes, None]:
        try:
            async for block in self._storage.read(key):
                yield block
        except TransientStorageError as error:
            raise _storage_down(error) from error


def _storage_down(error: TransientStorageError) -> Unavailable:
    return Unavailable(f"storage unavailable: {error}", reason="STORAGE_UNAVAILABLE")


def _s3_storage_type() -> type[S3Storage] | None:
    """S3Storage, when boto3 (the optional `s3` extra) is installed; without it no S3 backend exists."""
    try:
        from ferry.services.storage.s3 import S3Storage
    except ImportError:
        return None
    return S3Storage


class OwnStorage:
    """The sources of the stack's own URLs that this downloader can reach; none by default."""

    def __init__(self, sources: Sequence[OwnSource] = ()) -> None:
        self.sources = tuple(sources)

    @classmethod
    def of(cls, storage: Storage | None) -> OwnStorage:
        """The backends of the stack's storage (a chain, or one backend) this downloader can read from."""
        if storage is None:
            return cls()
        backends = storage.backends if isinstance(storage, StorageChain) else (storage,)
        s3_storage = _s3_storage_type()
        sources: list[OwnSource] = []
        for backend in backends:
            if isinstance(backend, LocalStorage):
                sources.append(LocalObjects(backend))
            elif s3_storage is not None and isinstance(backend, s3_storage):
                sources.append(BucketObjects(backend))
        return cls(sources)

    def source_for(self, url: str) -> OwnSource | None:
        """The source that issued `url`, or None: a URL for the network."""
        return next((source for source in self.sources if source.claims(url)), None)
