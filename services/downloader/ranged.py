"""Large files over several connections at once: byte ranges fetched side by side into one temp file.

Hosts of model weights cap each connection's rate; one stream gets one cap's worth. So a download starts as
HttpSource's single stream, and its first answer decides (`plan_ranges`, the one place): a file larger than
the threshold, whose size that answer gives, from a source that serves byte ranges (`Accept-Ranges: bytes`) and
names the file's version (a strong ETag or Last-Modified), is fetched instead as `parallel_connections` ranges
at once, each written at its own offset of a temp file sized up front. That first connection is dropped before
its body (one round trip, against a transfer of tens of MiB at least). Anything else goes on as one stream.

Every range asks `If-Range` with the first answer's validator, and its answer must be a 206 whose
Content-Range is exactly the range asked and whose ETag / Last-Modified are the first answer's: so each range
is a piece of one version of the file. A 200 (the source ignores ranges, or If-Range saw the file change) or
any other mismatch drops every range and downloads the file again over one stream, from nothing. A range
cut short resumes on its own from its last byte received; a transient failure retries that range alone, as
often and with the same backoff as a single stream. Every connection is HttpSource's, so the network guard
checks every hop. Memory stays flat: each range buffers at most two blocks of chunk_mib / connections (at
least 1 MiB), as much in all as one stream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from multidict import CIMultiDictProxy

from ferry.services.config import DownloaderConfig
from ferry.services.downloader.fetch import (
    BODY_CUT,
    FetchJob,
    HttpSource,
    ProgressCallback,
    RemoteFile,
    Transient,
    raise_if_transient,
    refusal,
)
from ferry.services.downloader.writer import AtomicFile, Span
from ferry.services.logs import url_for_log
from ferry.services.metrics import StackMetrics
from ferry.sizes import MIB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as HTTP writes it

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def plan_ranges(remote: RemoteFile, threshold: int, connections: int) -> list[ByteRange] | None:
    """The ranges to fetch at once for the file the first answer describes, or None to keep to one stream."""
    size = remote.size
    if size is None or size <= threshold or not remote.accepts_ranges or remote.validator is None:
        return None
    step = -(-size // connections)  # ceiling: `connections` ranges at most, the last one shorter
    ranges = [ByteRange(start, min(start + step, size) - 1) for start in range(0, size, step)]
    return ranges if len(ranges) > 1 else None


class _Divert(Exception):
    """Raised from the single stream's start to leave it for ranges (never escapes this module)."""

    def __init__(self, remote: RemoteFile, ranges: list[ByteRange]) -> None:
        super().__init__("fetching in ranges")
        self.remote = remote
        self.ranges = ranges


class _NotOneVersion(Exception):
    """A range's answer is no piece of the file the first answer described: download it whole instead."""


class _Received:
    """Bytes received over every range: the download's progress."""

    def __init__(self, on_progress: ProgressCallback) -> None:
        self._on_progress = on_progress
        self.total = 0

    def add(self, count: int) -> None:
        self.total += count
        self._on_progress(self.total)


@dataclass(frozen=True)
class _Ranges:
    """What every range of one download shares: the job, the version of the file the first answer described,
    and the progress they make together."""

    job: FetchJob
    remote: RemoteFile
    received: _Received


class RangedSource:
    """HttpSource's `fetch`, in ranges over several connections where the file is large and the source able."""

    def __init__(self, source: HttpSource, config: DownloaderConfig, metrics: StackMetrics, block_size: int) -> None:
        self._source = source
        self._metrics = metrics
        self._retries = config.retries
        self._threshold = int(config.parallel_threshold_mib * MIB)
        self._connections = config.parallel_connections
        self._block_size = max(MIB, block_size // self._connections)

    async def fetch(self, job: FetchJob, out: AtomicFile) -> RemoteFile:
        """The job into `out` as HttpSource.fetch does it (same limits, errors and callbacks), in ranges if it pays."""

        async def started(remote: RemoteFile) -> None:
            await job.on_started(remote)
            if ranges := plan_ranges(remote, self._threshold, self._connections):
                raise _Divert(remote, ranges)

        try:
            return await self._source.fetch(replace(job, on_started=started), out)
        except _Divert as divert:
            remote, ranges = divert.remote, divert.ranges
        try:
            await self._fetch_ranges(_Ranges(job, remote, _Received(job.on_progress)), out, ranges)
        except _NotOneVersion as why:
            log.info("downloading %s over one connection: %s", url_for_log(job.url), why)
            self._metrics.download_ranged.labels("fell_back_single").inc()
            await out.truncate()
            return await self._source.fetch(job, out)
        self._metrics.download_ranged.labels("ranged").inc()
        return remote

    async def _fetch_ranges(self, shared: _Ranges, out: AtomicFile, ranges: list[ByteRange]) -> None:
        """Every range at once; the first to fail stops the others (their connections close) and is raised."""
        assert shared.remote.size is not None
        await out.allocate(shared.remote.size)
        tasks = [asyncio.create_task(self._fetch_range(shared, out.span(r.start, self._block_size), r)) for r in ranges]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if (error := task.exception()) is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch_range(self, shared: _Ranges, span: Span, byte_range: ByteRange) -> None:
        for attempt in range(self._retries + 1):
            try:
                await self._range_attempt(shared, span, byte_range)
                await span.drain()
                return
            except Transient as failure:
                part = f" on bytes {byte_range.start}-{byte_range.end}"
                await self._source.pause_before_retry(shared.job.url, attempt, failure, part)

    async def _range_attempt(self, shared: _Ranges, span: Span, byte_range: ByteRange) -> None:
        """One request for what `span` still lacks of `byte_range`."""
        remote = shared.remote
        assert remote.validator is not None
        first = byte_range.start + span.size
        request = {
            **shared.job.headers,
            "Accept-Encoding": "identity",
            "Range": f"bytes={first}-{byte_range.end}",
            "If-Range": remote.validator,
        }
        response = await self._source.get(shared.job.url, request)
        async with response:
            raise_if_transient(response)
            if response.status == 200:
                raise _NotOneVersion("the source answered a range request with the whole file")
            if response.status != 206:
                raise refusal(response.status, response.url)
            content_range = response.headers.get("Content-Range", "")
            if content_range != f"bytes {first}-{byte_range.end}/{remote.size}":
                raise _NotOneVersion(f"the source answered bytes={first}-{byte_range.end} with {content_range[:80]!r}")
            if not _same_version(remote, response.headers):
                raise _NotOneVersion("the file changed between ranges (its ETag or Last-Modified)")
            if span.size:
                self._metrics.download_resumes.labels("resumed").inc()
            try:
                async for piece in response.content.iter_any():
                    if span.size + len(piece) > byte_range.size:
                        # Past the range is another range's place in the file: never written from here.
                        raise Transient("the source sent more than the range asked", "bad_range")
                    await span.write(piece)
                    shared.received.add(len(piece))
            except BODY_CUT as error:
                cut = f"range cut short at byte {byte_range.start + span.size}: {type(error).__name__}"
                raise Transient(cut, "cut_short") from error
            if span.size != byte_range.size:
                raise Transient(f"range ended at {span.size} of its {byte_range.size} bytes", "cut_short")


def _same_version(remote: RemoteFile, headers: CIMultiDictProxy[str]) -> bool:
    """Whether an answer's ETag and Last-Modified, where it gives them, are the first answer's."""
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if remote.etag and etag and etag != remote.etag:
        return False
    return not (remote.last_modified and modified and modified != remote.last_modified)
