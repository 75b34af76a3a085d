"""The downloader engine: URLs and data URIs into files under the data roots, as a stream of events.

    async for event in downloader.download(job):   # Started, Progress…, Completed
        ...

Concurrent jobs for the same (target dir, URL) share one `Flight` in this
process and one lock file across processes, so the source is fetched once.
The flight's transfer runs as its own task: a caller that leaves stops
listening, and the transfer is cancelled only when no caller is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ferry.atomic_files import PART_SUFFIX
from ferry.errors import FerryError, NotFound, ResourceExhausted, Unavailable
from ferry.services import tracing
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.datauri import extension_for, parse_data_uri, write_decoded
from ferry.services.downloader.fetch import FetchJob, HttpSource, RemoteFile
from ferry.services.downloader.guard import NetworkGuard
from ferry.services.downloader.headers import check_request_headers
from ferry.services.downloader.locks import LockFiles, path_lock_key
from ferry.services.downloader.names import hashed_name
from ferry.services.downloader.own_storage import OwnFile, OwnSource, OwnStorage
from ferry.services.downloader.paths import DataRoots
from ferry.services.downloader.ranged import RangedSource
from ferry.services.downloader.reads import ReadHeader, read_file
from ferry.services.downloader.records import DownloadRecord, RecordStore, flight_key
from ferry.services.downloader.url_prefix import UrlPrefix
from ferry.services.downloader.writer import AtomicFile, link_into_place, part_prefix
from ferry.services.metrics import StackMetrics
from ferry.sizes import MIB

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.1  # at most ~10 progress events per second
COPY_BLOCK = MIB
# A record's temp file lives for one write; one this old was left by a process that died mid-write.
STALE_TEMP_SECONDS = 3600


@dataclass(frozen=True)
class DownloadJob:
    url: str
    target_dir: str = ""
    force: bool = False
    request_headers: Mapping[str, str] = field(default_factory=dict)
    filesize_limit: int | None = None
    model_weights: bool = False
    # Into the URL cache, for a caller that places the file itself (target_dir is ignored).
    url_cache: bool = False


@dataclass(frozen=True)
class Started:
    total_bytes: int | None
    file_name: str


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    total_bytes: int | None
    bytes_per_second: float


@dataclass(frozen=True)
class Completed:
    path: Path
    file_size: int
    cache_hit: bool
    content_type: str
    file_name: str


Event = Started | Progress | Completed


class Flight:
    """One transfer and everyone waiting for it: events fan out to each subscriber's queue."""

    def __init__(self) -> None:
        self.started: Started | None = None
        self.progress: Progress | None = None
        self.task: asyncio.Task[None] | None = None
        self._queues: set[asyncio.Queue[Event | BaseException]] = set()

    def subscribe(self) -> asyncio.Queue[Event | BaseException]:
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        for known in (self.started, self.progress):  # a late joiner catches up
            if known is not None:
                queue.put_nowait(known)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | BaseException]) -> None:
        self._queues.discard(queue)
        if not self._queues and self.task is not None and not self.task.done():
            self.task.cancel()  # nobody is listening any more: stop the transfer

    def publish(self, event: Event | BaseException) -> None:
        if isinstance(event, Started):
            self.started = event
        elif isinstance(event, Progress):
            self.progress = event
        for queue in self._queues:
            queue.put_nowait(event)


class ProgressReporter:
    """Turns byte counts into Progress events, at most one per interval (plus the last)."""

    def __init__(self, flight: Flight) -> None:
        self._flight = flight
        self._began = time.monotonic()
        self._last = 0.0
        self.total: int | None = None

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_SECONDS or done == self.total:
            self._last = now
            rate = done / max(now - self._began, 1e-6)
            self._flight.publish(Progress(done, self.total, rate))


class Downloader:
    """`own_storage` resolves URLs of files the stack stored itself; `trusted_cdn_url`, the stack's CDN
    as configured, is fetched over HTTP past the network guard (see own_storage.py and fetch.py)."""

    def __init__(
        self,
        config: DownloaderConfig,
        data_dir: Path,
        own_storage: OwnStorage | None = None,
        trusted_cdn_url: str | None = None,
        metrics: StackMetrics | None = None,
    ) -> None:
        self.config = config
        self.roots = DataRoots(data_dir, config.temp_dir)
        self.records = RecordStore(self.roots.internal / "records")
        self.locks = LockFiles(self.roots.internal / "locks")
        self.guard = NetworkGuard(config.allow_private_networks, config.allowed)
        self.own_storage = own_storage or OwnStorage()
        self.metrics = metrics or StackMetrics()
        trusted_origin = UrlPrefix.parse(trusted_cdn_url) if trusted_cdn_url else None
        self.http = HttpSource(self.guard, config, self.metrics, trusted_origin)
        self._flights: dict[tuple[object, ...], Flight] = {}
        self._block_size = max(1, config.chunk_mib) * MIB
        self.ranged = RangedSource(self.http, config, self.metrics, self._block_size)
        self.metrics.refresh_with(self._read_metrics)

    async def _read_metrics(self) -> None:
        self.metrics.downloads_active.set(len(self._flights))
        # Read from disk, so it counts what every process sharing the data dir wrote; off the loop, as it costs
        # ~0.09 ms a download (1,000: 91 ms on a 2-core VM), once per scrape.
        live = await asyncio.to_thread(self._cached)
        self.metrics.download_cache_files.set(len(live))
        self.metrics.download_cache_bytes.set(sum(record.size for _, record in live))

    def _cached(self) -> list[tuple[str, DownloadRecord]]:
        """Every download whose file is still the one recorded: the cache, whichever process wrote it."""
        return [(key, record) for key, record in self.records.all() if record.vouches_for_file()]

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        await self.http.close()

    # -- the public operations ------------------------------------------------------------

    def download(self, job: DownloadJob) -> AsyncIterator[Event]:
        """Events for `job`: Started, Progress…, then Completed; failures raise FerryError. While tracing is on,
        the current span (the Download RPC's) says what was fetched."""
        return self._traced(job) if tracing.ENABLED else self._events(job)

    async def _traced(self, job: DownloadJob) -> AsyncIterator[Event]:
        # The RPC's own span, not one more: a span costs ~65 µs to make and ~100 µs to export on a 2-core VM,
        # and a second one put a cache-hit download's tracing cost over its 0.3 ms goal (bench/observability.py).
        scheme = job.url.split(":", 1)[0].lower() if ":" in job.url else ""
        # The host alone: a path or query may carry a signature or the user's data.
        tracing.annotate({"url.scheme": scheme, "server.address": tracing.url_host(job.url)})
        async for event in self._events(job):
            if isinstance(event, Completed):
                tracing.annotate({"ferry.download.bytes": event.file_size, "ferry.download.cache_hit": event.cache_hit})
            yield event

    async def _events(self, job: DownloadJob) -> AsyncIterator[Event]:
        scheme = job.url.split(":", 1)[0].lower() if ":" in job.url else ""
        own = None if scheme == "data" else self.own_storage.source_for(job.url)
        try:
            check_request_headers(job.request_headers)  # before anything connects: aiohttp's checks come too late
            if scheme != "data" and own is None:
                self.http.check_url(job.url)  # refuse bad schemes and blocked literals before touching disk
        except FerryError as refused:
            self.metrics.downloads.labels("data" if scheme == "data" else "http", refused.reason).inc()
            raise
        target = self._target(job)
        fresh = not (job.model_weights or job.url_cache or job.target_dir)  # a folder made for this request alone
        key = flight_key(target, job.url)
        flight_id = (key, job.force, job.filesize_limit, tuple(sorted(job.request_headers.items())))
        flight = self._flights.get(flight_id)
        if flight is not None:
            self.metrics.download_joins.inc()
        else:
            flight = Flight()
            self._flights[flight_id] = flight
            if scheme == "data":
                source, work = "data", self._data_uri(flight, job, target, key)
            elif own is not None:
                source, work = "own", self._own(own, flight, job, target, key)
            else:
                source, work = "http", self._http(flight, job, target, key)
            counted = self._counted(work, source, job.force)
            flight.task = asyncio.create_task(self._fly(flight, flight_id, counted, target if fresh else None))
        queue = flight.subscribe()
        try:
            while True:
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Completed):
                    return
        finally:
            flight.unsubscribe(queue)

    def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncGenerator[ReadHeader | bytes, None]:
        """A file under the data roots: its ReadHeader, then its bytes from `offset`; see reads.py (close it early
        with `aclosing`, which lets its reader lock go)."""
        return read_file(self.roots, self.locks, path, offset, length)

    async def _counted(self, work: Coroutine[Any, Any, Completed], source: str, forced: bool) -> Completed:
        """`work`'s outcome counted once per transfer (joiners are counted apart): hit, miss, forced, or the
        failure's reason."""
        try:
            completed = await work
        except FerryError as error:
            self.metrics.downloads.labels(source, error.reason).inc()
            raise
        except OSError:  # the local disk (answered as DISK_FULL and the like)
            self.metrics.downloads.labels(source, "DISK_ERROR").inc()
            raise
        outcome = "hit" if completed.cache_hit else "forced" if forced else "miss"
        self.metrics.downloads.labels(source, outcome).inc()
        if not completed.cache_hit:
            self.metrics.downloaded_bytes.labels(source).inc(completed.file_size)
        return completed

    def _target(self, job: DownloadJob) -> Path:
        if job.model_weights:
            return self.roots.model_weights_dir(job.url)
        if job.url_cache:
            return self.roots.url_cache_dir(job.url)
        return self.roots.target_dir(job.target_dir)

    async def _fly(
        self, flight: Flight, flight_id: tuple[object, ...], work: Coroutine[Any, Any, Completed], fresh: Path | None
    ) -> None:
        """Run `work` for every subscriber; `fresh`, the folder made for this request alone, goes if it failed."""
        try:
            flight.publish(await work)
            return
        except asyncio.CancelledError:
            flight.publish(asyncio.CancelledError())
        except FerryError as error:
            flight.publish(error)
        except OSError as error:  # the local disk, not the source
            flight.publish(_disk_error(error))
        except Exception as error:  # a bug: still answer every waiter, and log it
            log.exception("download failed unexpectedly")
            flight.publish(FerryError(f"internal error: {type(error).__name__}: {error}"))
        finally:
            self._flights.pop(flight_id, None)
        if fresh is not None:
            _remove_if_empty(fresh)

    @asynccontextmanager
    async def _holding(self, key: str) -> AsyncIterator[None]:
        """The key's lock for a transfer. If the transfer fails and no earlier download of the key is
        on record, the lock file goes too: it guards nothing."""
        async with self.locks.hold(key) as lock:
            try:
                yield
            except BaseException:
                if self.records.load(key) is None:
                    lock.remove_on_release()
                raise

    # -- http(s) --------------------------------------------------------------------------

    def _hit(self, flight: Flight, key: str, record: DownloadRecord) -> Completed:
        self.records.touch(key, record)
        path = Path(record.path)
        flight.publish(Started(record.size, path.name))
        return Completed(path, record.size, True, record.content_type, path.name)

    async def _http(self, flight: Flight, job: DownloadJob, target: Path, key: str) -> Completed:
        began = time.time()
        record = self.records.load(key)
        if record is not None and not job.force and record.url == job.url and record.vouches_for_file():
            if job.model_weights:  # weights are immutable by URL: present means done
                return self._hit(flight, key, record)
            remote = await self.http.head(job.url, job.request_headers)
            if remote is not None and _still_current(record, remote):
                return self._hit(flight, key, record)
        async with self._holding(key):
            if (record := self._completed_since(key, began)) is not None:
                return self._hit(flight, key, record)  # another process got it while we waited for the lock
            _sweep_parts(target, key)
            reporter = ProgressReporter(flight)

            async def started(remote: RemoteFile) -> None:
                reporter.total = remote.size
                flight.publish(Started(remote.size, remote.file_name))

            out = AtomicFile(target, key, self._block_size)
            try:
                fetch = FetchJob(job.url, job.request_headers, self._limit(job), started, reporter)
                remote = await self.ranged.fetch(fetch, out)
                path = await out.commit(target / remote.file_name)
            finally:
                await out.discard()
            record = DownloadRecord.for_file(job.url, path, remote.content_type, remote.etag, remote.last_modified)
            self.records.save(key, record)
        self._schedule_eviction()
        return Completed(path, record.size, False, remote.content_type, path.name)

    def _completed_since(self, key: str, began: float) -> DownloadRecord | None:
        """The record another process completed for `key` after `began`, while its file is still the one recorded."""
        record = self.records.load(key)
        return record if record is not None and record.completed_at >= began and record.vouches_for_file() else None

    def _limit(self, job: DownloadJob) -> int | None:
        limits = [job.filesize_limit]
        if self.config.max_download_mib is not None:
            limits.append(int(self.config.max_download_mib * MIB))
        given = [limit for limit in limits if limit is not None]
        return min(given) if given else None

    # -- files the stack stored itself ------------------------------------------------------

    async def _own(self, source: OwnSource, flight: Flight, job: DownloadJob, target: Path, key: str) -> Completed:
        began = time.time()
        found = await source.find(job.url)  # NotFound when unknown or expired, as the CDN would answer
        limit = self._limit(job)
        if limit is not None and found.size > limit:
            raise ResourceExhausted(
                f"stored file has {found.size} bytes, over the {limit}-byte limit", reason="FILE_TOO_LARGE"
            )
        # A stored object never changes under its URL: while it exists, the copy made before is current.
        record = None if job.force else self.records.load(key)
        if record is not None and record.url == job.url and record.size == found.size and record.vouches_for_file():
            return self._hit(flight, key, record)
        async with self._holding(key):
            if (record := self._completed_since(key, began)) is not None:
                return self._hit(flight, key, record)  # another process got it while we waited for the lock
            _sweep_parts(target, key)
            flight.publish(Started(found.size, found.file_name))
            path = target / found.file_name
            if found.path is not None and await _linked(found.path, target, key, path):
                flight.publish(Progress(found.size, found.size, 0.0))
            else:
                await self._copy_own(found, target, key, path, ProgressReporter(flight))
            record = DownloadRecord.for_file(job.url, path, found.content_type, None, None)
            self.records.save(key, record)
        self._schedule_eviction()
        return Completed(path, record.size, False, found.content_type, found.file_name)

    async def _copy_own(self, found: OwnFile, target: Path, key: str, path: Path, reporter: ProgressReporter) -> None:
        """Where no link can be made: the local file's bytes, or the bucket's, through a temp file."""
        reporter.total = found.size
        out = AtomicFile(target, key, self._block_size)
        try:
            if found.path is not None:
                source = found.path
                await out.fill(lambda into: _copy_file(source, into))
            else:
                assert found.blocks is not None
                async with aclosing(found.blocks()) as blocks:
                    async for block in blocks:
                        await out.write(block)
                        if out.size > found.size:
                            break
                        reporter(out.size)
            if out.size != found.size:
                raise Unavailable(f"the stored file gave {out.size} of its {found.size} bytes", reason="STORAGE_ERROR")
            await out.commit(path)
        finally:
            await out.discard()
        reporter(found.size)

    # -- data: URIs -----------------------------------------------------------------------

    async def _data_uri(self, flight: Flight, job: DownloadJob, target: Path, key: str) -> Completed:
        parsed = parse_data_uri(job.url)
        cap = int(self.config.data_uri_limit_mib * MIB)
        limit = min(cap, job.filesize_limit) if job.filesize_limit is not None else cap
        name = hashed_name(job.url, extension_for(parsed.media_type))
        path = target / name
        record = self.records.load(key)
        if record is not None and not job.force and record.vouches_for_file():
            return self._hit(flight, key, record)  # same URI, same bytes
        async with self._holding(key):
            _sweep_parts(target, key)
            flight.publish(Started(None, name))
            out = AtomicFile(target, key, self._block_size)
            try:
                await out.fill(lambda f: write_decoded(job.url, parsed, f, limit=limit))
                await out.commit(path)
            finally:
                await out.discard()
            record = DownloadRecord.for_file(job.url, path, parsed.media_type, None, None)
            self.records.save(key, record)
        flight.publish(Progress(record.size, record.size, 0.0))
        self._schedule_eviction()
        return Completed(path, record.size, False, parsed.media_type, name)

    # -- housekeeping ---------------------------------------------------------------------

    def _schedule_eviction(self) -> None:
        if self.config.cache_budget_mib is not None:
            asyncio.get_running_loop().run_in_executor(None, self.evict_to_budget)

    def evict_to_budget(self) -> int:
        """Delete least-recently-used downloads until the cache fits its budget; returns bytes freed.

        Skips anything in flight here, and anything whose lock another process
        holds (being written or read there).
        """
        if self.config.cache_budget_mib is None:
            return 0
        budget = int(self.config.cache_budget_mib * MIB)
        live = self._cached()
        total = sum(r.size for _, r in live)
        busy = {flight_id[0] for flight_id in list(self._flights)}
        freed = 0
        for key, record in sorted(live, key=lambda item: item[1].last_access):
            if total - freed <= budget:
                break
            if key in busy:
                continue
            keys = (key, path_lock_key(record.path))
            held = [self.locks.try_exclusive(k) for k in keys]
            evicted = False
            try:
                if None in held:
                    continue  # being written or read, here or in another process
                if record.vouches_for_file():
                    os.unlink(record.path)
                    freed += record.size
                    self.metrics.download_evictions.inc()
                    self.metrics.download_evicted_bytes.inc(record.size)
                self.records.remove(key)
                evicted = True
            finally:
                for lock_key, fd in zip(keys, held, strict=True):
                    if fd is None:
                        continue
                    if evicted or lock_key != key:  # a readers' lock guards nothing once let go
                        self.locks.discard(lock_key, fd)
                    else:
                        os.close(fd)
        return freed

    def sweep_bookkeeping(self) -> int:
        """Remove records whose file is gone and lock files that guard nothing; returns how many files went.

        Safe beside other processes sharing the data dir: a record or lock file
        is removed only while this process holds its lock exclusively, so
        whatever another process holds (writing, reading) stays.
        """
        removed = 0
        vouched: set[str] = set()
        for key, record in self.records.all():
            if record.vouches_for_file():
                vouched.add(key)
            elif (fd := self.locks.try_exclusive(key)) is not None:
                current = self.records.load(key)  # again, under the lock: a writer may have just finished
                if current is not None and current.vouches_for_file():
                    vouched.add(key)
                    os.close(fd)
                    continue
                self.records.remove(key)
                self.locks.discard(key, fd)
                removed += 2
        removed += self.records.remove_stale_temps(time.time() - STALE_TEMP_SECONDS)
        for key in self.locks.keys():  # noqa: SIM118 (LockFiles lists its lock files; it is no dict)
            if key in vouched or (fd := self.locks.try_exclusive(key)) is None:
                continue  # guards a download, or someone holds it
            current = self.records.load(key)
            if current is not None and current.vouches_for_file():
                os.close(fd)  # a download finished since the listing
            else:
                self.locks.discard(key, fd)
                removed += 1
        return removed

    async def keep_tidy(self, interval_seconds: float) -> None:
        """Sweep the bookkeeping now and every `interval_seconds` until cancelled."""
        while True:
            try:
                removed = await asyncio.to_thread(self.sweep_bookkeeping)
                if removed:
                    log.info("removed %d stale download records and lock files", removed)
            except OSError as error:
                log.warning("sweeping download records failed; retrying in %.0fs: %s", interval_seconds, error)
            await asyncio.sleep(interval_seconds)

    def sweep_abandoned_parts(self) -> int:
        """Remove temp files a killed process left behind (their lock is free); returns how many."""
        removed = 0
        for root in self.roots.roots:
            for part in _abandoned_parts(root):
                key = part.name[1:].split(".", 1)[0]
                fd = self.locks.try_exclusive(key)
                if fd is None:
                    continue  # a live writer holds it
                try:
                    part.unlink(missing_ok=True)
                    removed += 1
                finally:
                    os.close(fd)
        return removed


def _abandoned_parts(root: Path) -> Iterator[Path]:
    """Temp files under `root` (`.<key>.<random><PART_SUFFIX>`). os.walk, not rglob: the storage's sweeper shares
    the data dir and removes expired objects' folders meanwhile, which rglob raises on and os.walk passes over."""
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and name.endswith(PART_SUFFIX):
                yield Path(folder) / name


def _disk_error(error: OSError) -> FerryError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"the data dir is full: {error}", reason="DISK_FULL")
    return Unavailable(f"cannot write to the data dir: {error}", reason="STORAGE_ERROR")


def _still_current(record: DownloadRecord, remote: RemoteFile) -> bool:
    """Same size as before, and the same validator when the source gives one."""
    if remote.size is None or remote.size != record.size:
        return False
    if remote.etag and record.etag:
        return remote.etag == record.etag
    if remote.last_modified and record.last_modified:
        return remote.last_modified == record.last_modified
    return True


async def _linked(source: Path, folder: Path, key: str, target: Path) -> bool:
    """Whether `target` is now a hard link to the stored file `source` (False: copy it instead)."""
    try:
        return await asyncio.to_thread(link_into_place, source, folder, key, target)
    except FileNotFoundError:
        if not await asyncio.to_thread(source.exists):  # swept (expired) since it was found
            raise NotFound("no stored file at this URL (unknown, or expired)", reason="OBJECT_NOT_FOUND") from None
        raise


def _copy_file(source: Path, into: BinaryIO) -> int:
    with open(source, "rb") as original:
        shutil.copyfileobj(original, into, COPY_BLOCK)
        return original.tell()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # something landed in it after all, or it is gone already
        folder.rmdir()


def _sweep_parts(folder: Path, key: str) -> None:
    """Leftovers of this key's earlier, killed transfers (the caller holds the key's lock)."""
    for part in folder.glob(f"{part_prefix(key)}*{PART_SUFFIX}"):
        part.unlink(missing_ok=True)
