"""Storage backends in fallback order, themselves a Storage.

A write goes to the first backend that takes it. Each backend is retried on
`TransientStorageError` with jittered exponential backoff; when its attempts
run out, or it answers `Unavailable`/`ResourceExhausted` (retrying a missing
bucket or a full disk will not help), the chain logs a warning and moves on.
Any other `FerryError` is the request's own fault and is raised as is.

Each backend has a circuit breaker (`breaker.py`): after `failures_to_open`
failed attempts in a row it opens, and writes skip that backend at once for
`cool_down_seconds` instead of spending their retries on it (with S3 down,
15–19 s per upload before falling back). Then one write probes it with a
single attempt; a success closes the breaker and writes return to it by
themselves. Watchers (`watch`) hear each backend open and close.

A multipart upload stays on the backend that created it, named by the
chain's upload id `<backend index>:<backend upload id>`: its parts exist
nowhere else, so there is no falling back mid-upload, only retrying, open
breaker or not (its calls still tell the breaker how the backend is doing).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from ferry.backoff import backoff_seconds
from ferry.errors import NotFound, ResourceExhausted, Unavailable
from ferry.services import tracing
from ferry.services.metrics import StackMetrics
from ferry.services.storage.base import NewObject, Storage, StoredObject, TransientStorageError
from ferry.services.storage.breaker import Admission, Breaker

log = logging.getLogger(__name__)
T = TypeVar("T")

_UPLOAD_ID = re.compile(r"(\d+):(.+)", re.DOTALL)
# A backend answering these cannot take the write now, however often it is asked.
_BACKEND_DOWN = (Unavailable, ResourceExhausted)
# Told (backend name, serving) when a backend's breaker opens (False) or closes (True).
BreakerWatcher = Callable[[str, bool], Awaitable[None]]


class StorageChain(Storage):
    def __init__(
        self,
        backends: Sequence[Storage],
        *,
        attempts: int = 10,
        backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 5.0,
        failures_to_open: int = 5,
        cool_down_seconds: float = 30.0,
        metrics: StackMetrics | None = None,
    ) -> None:
        """`failures_to_open` attempts that fail in a row open a backend's breaker for `cool_down_seconds`.

        5 by default: with the default backoff, a backend that is down opens after ~1 s of one
        write's retries (or at once under concurrent writes), while a single blip is still retried.
        """
        if not backends:
            raise ValueError("a storage chain needs at least one backend")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.backends = tuple(backends)
        self.metrics = metrics or StackMetrics()
        self.name = " -> ".join(backend.name for backend in self.backends)
        self.breakers = tuple(Breaker(failures_to_open, cool_down_seconds) for _ in self.backends)
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._watchers: list[BreakerWatcher] = []

    def watch(self, watcher: BreakerWatcher) -> None:
        """Tell `watcher` whenever a backend's breaker opens or closes."""
        self._watchers.append(watcher)

    async def _succeeded(self, index: int) -> None:
        if self.breakers[index].succeeded():
            log.warning(
                "storage %s: breaker closed, the backend answers again: writes go to it again",
                self.backends[index].name,
            )
            await self._tell(index, serving=True)

    async def _failed(self, index: int) -> None:
        breaker = self.breakers[index]
        if breaker.failed():
            log.warning(
                "storage %s: breaker open after %d failed attempts in a row: "
                "writes skip it for %gs, then one probes it",
                self.backends[index].name,
                breaker.failures_in_a_row,
                breaker.cool_down_seconds,
            )
            await self._tell(index, serving=False)

    async def _tell(self, index: int, *, serving: bool) -> None:
        for watcher in self._watchers:
            await watcher(self.backends[index].name, serving)

    async def _retried(
        self, index: int, what: str, operation: Callable[[Storage], Awaitable[T]], *, attempts: int, while_closed: bool
    ) -> T:
        """`operation` on backend `index`, retried while it fails transiently; the last TransientStorageError escapes.

        Every outcome goes to the backend's breaker. `while_closed`: stop retrying once the breaker is
        open (a write that may fall back should, rather than wait for a backend known to be down).
        """
        backend = self.backends[index]
        for retry in range(attempts):
            try:
                result = await operation(backend)
            except TransientStorageError as error:
                self.metrics.storage_failed_attempts.labels(backend.name).inc()
                await self._failed(index)
                if retry + 1 == attempts or (while_closed and self.breakers[index].is_open):
                    raise
                delay = backoff_seconds(retry, self._backoff, self._max_backoff)
                log.info(
                    "storage %s: %s failed (attempt %d of %d), retrying in %.2fs: %s",
                    backend.name,
                    what,
                    retry + 1,
                    attempts,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
            except _BACKEND_DOWN:
                self.metrics.storage_failed_attempts.labels(backend.name).inc()
                await self._failed(index)
                raise
            else:
                await self._succeeded(index)
                return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _first_taker(self, what: str, operation: Callable[[Storage], Awaitable[T]]) -> tuple[int, T]:
        failures: list[str] = []
        for index, backend in enumerate(self.backends):
            breaker = self.breakers[index]
            admission = breaker.admit()
            if admission is None:
                probe_in = breaker.seconds_to_probe()
                failures.append(f"{backend.name}: skipped, its breaker is open (probed again in {probe_in:.0f}s)")
                log.debug("storage %s: breaker open, skipped", backend.name)
                continue
            probing = admission is Admission.PROBE
            if probing:
                log.info("storage %s: cool-down over, probing it with one attempt", backend.name)
            try:
                attempts = 1 if probing else self._attempts
                return index, await self._retried(index, what, operation, attempts=attempts, while_closed=True)
            except (TransientStorageError, *_BACKEND_DOWN) as error:
                failures.append(f"{backend.name}: {error}")
                following = self.backends[index + 1].name if index + 1 < len(self.backends) else None
                if following:
                    self.metrics.storage_fallbacks.labels(backend.name).inc()
                log.warning(
                    "storage %s failed to %s: %s; %s",
                    backend.name,
                    what,
                    error,
                    f"falling back to {following}" if following else "no backend left",
                )
            finally:
                if probing:
                    breaker.probe_ended()
        raise Unavailable("storage unavailable: " + "; ".join(failures), reason="STORAGE_UNAVAILABLE")

    async def put_file(self, path: Path, new: NewObject, sha256: str) -> StoredObject:
        with tracing.span("ferry.store"):
            _, stored = await self._first_taker("store a file", lambda backend: backend.put_file(path, new, sha256))
            return self._counted(stored)

    async def put_bytes(self, data: bytes, new: NewObject) -> StoredObject:
        with tracing.span("ferry.store"):
            _, stored = await self._first_taker("store a file", lambda backend: backend.put_bytes(data, new))
            return self._counted(stored)

    def _counted(self, stored: StoredObject) -> StoredObject:
        tracing.annotate({"ferry.store.backend": stored.backend, "ferry.store.bytes": stored.size})
        self.metrics.stored_objects.labels(stored.backend).inc()
        self.metrics.stored_bytes.labels(stored.backend).inc(stored.size)
        return stored

    async def create_multipart(self, *, file_name: str, content_type: str, expires_in: int | None) -> str:
        index, upload_id = await self._first_taker(
            "start a multipart upload",
            lambda backend: backend.create_multipart(
                file_name=file_name, content_type=content_type, expires_in=expires_in
            ),
        )
        self.metrics.multipart_uploads.labels("started").inc()
        return f"{index}:{upload_id}"

    def _owner(self, upload_id: str) -> tuple[int, str]:
        match = _UPLOAD_ID.fullmatch(upload_id)
        if match is None or int(match[1]) >= len(self.backends):
            raise NotFound(f"no multipart upload {upload_id!r}", reason="UNKNOWN_UPLOAD")
        return int(match[1]), match[2]

    async def _on_owner(self, upload_id: str, what: str, operation: Callable[[Storage, str], Awaitable[T]]) -> T:
        index, backend_upload_id = self._owner(upload_id)
        backend = self.backends[index]
        try:
            return await self._retried(
                index,
                what,
                lambda owner: operation(owner, backend_upload_id),
                attempts=self._attempts,
                while_closed=False,
            )
        except TransientStorageError as error:
            raise Unavailable(f"storage unavailable: {backend.name}: {error}", reason="STORAGE_UNAVAILABLE") from error

    async def put_part(self, upload_id: str, part_number: int, path: Path) -> str:
        return await self._on_owner(
            upload_id, f"store part {part_number}", lambda backend, own_id: backend.put_part(own_id, part_number, path)
        )

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> StoredObject:
        stored = await self._on_owner(
            upload_id, "complete a multipart upload", lambda backend, own_id: backend.complete_multipart(own_id, parts)
        )
        self.metrics.multipart_uploads.labels("completed").inc()
        return self._counted(stored)

    async def abort_multipart(self, upload_id: str) -> None:
        try:
            self._owner(upload_id)
        except NotFound:
            return  # as the contract says: aborting an unknown upload is not an error
        await self._on_owner(
            upload_id, "abort a multipart upload", lambda backend, own_id: backend.abort_multipart(own_id)
        )
        self.metrics.multipart_uploads.labels("aborted").inc()

    async def sweep(self, now: datetime) -> int:
        """Sweep every backend; one failing does not stop the others."""
        results = await asyncio.gather(*(backend.sweep(now) for backend in self.backends), return_exceptions=True)
        removed = 0
        for backend, result in zip(self.backends, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("storage %s: sweep failed: %s", backend.name, result)
            else:
                removed += result
        self.metrics.swept.inc(removed)
        return removed

    async def close(self) -> None:
        results = await asyncio.gather(*(backend.close() for backend in self.backends), return_exceptions=True)
        for backend, result in zip(self.backends, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("storage %s: close failed: %s", backend.name, result)
