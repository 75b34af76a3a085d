"""Storage backends in fallback order, themselves a Storage.

A write goes to the first backend that takes it. Each backend is retried on
`TransientStorageError` with jittered exponential backoff; when its attempts
run out, or it answers `Unavailable`/`ResourceExhausted` (retrying a missing
bucket or a full disk will not help), the chain logs a warning and moves on.
Any other `FerryError` is the request's own fault and is raised as is.

A multipart upload stays on the backend that created it, named by the
chain's upload id `<backend index>:<backend upload id>`: its parts exist
nowhere else, so there is no falling back mid-upload, only retrying.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from ferry.services.errors import NotFound, ResourceExhausted, Unavailable
from ferry.services.storage.base import Storage, StoredObject, TransientStorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

_UPLOAD_ID = re.compile(r"(\d+):(.+)", re.DOTALL)
# A backend answering these cannot take the write now, however often it is asked.
_BACKEND_DOWN = (Unavailable, ResourceExhausted)


class StorageChain(Storage):
    def __init__(
        self,
        backends: Sequence[Storage],
        *,
        attempts: int = 10,
        backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        if not backends:
            raise ValueError("a storage chain needs at least one backend")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.backends = tuple(backends)
        self.name = " -> ".join(backend.name for backend in self.backends)
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds

    def _delay(self, retry: int) -> float:
        # Half fixed, half random: spread out, yet never much shorter than the exponential step.
        step = min(self._max_backoff, self._backoff * 2.0**retry)
        return step * random.uniform(0.5, 1.0)

    async def _retried(self, backend: Storage, what: str, operation: Callable[[Storage], Awaitable[T]]) -> T:
        """`operation` on `backend`, retried while it fails transiently; the last TransientStorageError escapes."""
        for retry in range(self._attempts):
            try:
                return await operation(backend)
            except TransientStorageError as error:
                if retry + 1 == self._attempts:
                    raise
                delay = self._delay(retry)
                log.info(
                    "storage %s: %s failed (attempt %d of %d), retrying in %.2fs: %s",
                    backend.name,
                    what,
                    retry + 1,
                    self._attempts,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _first_taker(self, what: str, operation: Callable[[Storage], Awaitable[T]]) -> tuple[int, T]:
        failures: list[str] = []
        for index, backend in enumerate(self.backends):
            try:
                return index, await self._retried(backend, what, operation)
            except (TransientStorageError, *_BACKEND_DOWN) as error:
                failures.append(f"{backend.name}: {error}")
                following = self.backends[index + 1].name if index + 1 < len(self.backends) else None
                log.warning(
                    "storage %s failed to %s: %s; %s",
                    backend.name,
                    what,
                    error,
                    f"falling back to {following}" if following else "no backend left",
                )
        raise Unavailable("storage unavailable: " + "; ".join(failures), reason="STORAGE_UNAVAILABLE")

    async def put_file(
        self, path: Path, *, file_name: str, content_type: str, sha256: str, expires_in: int | None
    ) -> StoredObject:
        _, stored = await self._first_taker(
            "store a file",
            lambda backend: backend.put_file(
                path, file_name=file_name, content_type=content_type, sha256=sha256, expires_in=expires_in
            ),
        )
        return stored

    async def put_bytes(self, data: bytes, *, file_name: str, content_type: str, expires_in: int | None) -> StoredObject:
        _, stored = await self._first_taker(
            "store a file",
            lambda backend: backend.put_bytes(data, file_name=file_name, content_type=content_type, expires_in=expires_in),
        )
        return stored

    async def create_multipart(self, *, file_name: str, content_type: str, expires_in: int | None) -> str:
        index, upload_id = await self._first_taker(
            "start a multipart upload",
            lambda backend: backend.create_multipart(
                file_name=file_name, content_type=content_type, expires_in=expires_in
            ),
        )
        return f"{index}:{upload_id}"

    def _owner(self, upload_id: str) -> tuple[Storage, str]:
        match = _UPLOAD_ID.fullmatch(upload_id)
        if match is None or int(match[1]) >= len(self.backends):
            raise NotFound(f"no multipart upload {upload_id!r}", reason="UNKNOWN_UPLOAD")
        return self.backends[int(match[1])], match[2]

    async def _on_owner(self, upload_id: str, what: str, operation: Callable[[Storage, str], Awaitable[T]]) -> T:
        backend, backend_upload_id = self._owner(upload_id)
        try:
            return await self._retried(backend, what, lambda owner: operation(owner, backend_upload_id))
        except TransientStorageError as error:
            raise Unavailable(f"storage unavailable: {backend.name}: {error}", reason="STORAGE_UNAVAILABLE") from error

    async def put_part(self, upload_id: str, part_number: int, path: Path) -> str:
        return await self._on_owner(
            upload_id, f"store part {part_number}", lambda backend, own_id: backend.put_part(own_id, part_number, path)
        )

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> StoredObject:
        return await self._on_owner(
            upload_id, "complete a multipart upload", lambda backend, own_id: backend.complete_multipart(own_id, parts)
        )

    async def abort_multipart(self, upload_id: str) -> None:
        await self._on_owner(
            upload_id, "abort a multipart upload", lambda backend, own_id: backend.abort_multipart(own_id)
        )

    async def sweep(self, now: datetime) -> int:
        """Sweep every backend; one failing does not stop the others."""
        results = await asyncio.gather(*(backend.sweep(now) for backend in self.backends), return_exceptions=True)
        removed = 0
        for backend, result in zip(self.backends, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("storage %s: sweep failed: %s", backend.name, result)
            else:
                removed += result
        return removed

    async def close(self) -> None:
        results = await asyncio.gather(*(backend.close() for backend in self.backends), return_exceptions=True)
        for backend, result in zip(self.backends, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("storage %s: close failed: %s", backend.name, result)
