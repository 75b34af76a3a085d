"""HTTP(S) sources: redirects under the network guard, retries with jittered backoff, resume with Range.

Every hop of a redirect chain is checked by the guard (the URL here, the
resolved address in the connector's resolver), at most `MAX_REDIRECTS` hops;
only a first hop under the stack's own CDN, as configured, goes unchecked.
Credentials never follow a redirect to another origin. Transient failures
(connection reset, stall, 5xx, 408, 429) retry; a body cut short resumes from
where it stopped when the source supports ranges and its validator (ETag or
Last-Modified) still matches, else restarts. A body shorter than its
Content-Length is never a success.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from ferry.backoff import backoff_seconds
from ferry.errors import FailedPrecondition, FerryError, NotFound, PermissionDenied, ResourceExhausted, Unavailable
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.guard import AddressBlocked, NetworkGuard
from ferry.services.downloader.names import choose_file_name
from ferry.services.downloader.url_prefix import UrlPrefix
from ferry.services.downloader.writer import AtomicFile
from ferry.services.logs import url_for_log
from ferry.services.metrics import StackMetrics

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_RETRY_AFTER_SECONDS = 60.0
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504}
# What a body being read raises when its connection drops or stalls: the bytes so far are kept, to resume from.
BODY_CUT = (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError)
CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization"}


@dataclass
class RemoteFile:
    """What the source said about the file."""

    size: int | None
    etag: str | None
    last_modified: str | None
    content_type: str
    file_name: str
    accepts_ranges: bool

    @property
    def validator(self) -> str | None:
        """What If-Range may carry: a strong ETag, else Last-Modified."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


class Transient(Exception):
    """A failure worth retrying; `cause` is its kind (a metrics label: `connection`, `cut_short`, `bad_range`, or
    `http_<status>` of TRANSIENT_STATUSES), `retry_after` when the source said how long to wait."""

    def __init__(self, message: str, cause: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.retry_after = retry_after


class _CutShort(Transient):
    """The body stopped early; `remote` is what the source had promised, for resuming."""

    def __init__(self, remote: RemoteFile, message: str) -> None:
        super().__init__(message, "cut_short")
        self.remote = remote


StartedCallback = Callable[[RemoteFile], Awaitable[None]]
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class FetchJob:
    """One body to fetch: `limit` bounds it in bytes; `on_started` hears what the first answer said of the file
    (before its body), `on_progress` the bytes written so far."""

    url: str
    headers: Mapping[str, str]
    limit: int | None
    on_started: StartedCallback
    on_progress: ProgressCallback


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def raise_if_transient(response: aiohttp.ClientResponse) -> None:
    """Transient (with the source's Retry-After) for a status worth retrying."""
    if response.status in TRANSIENT_STATUSES:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        raise Transient(f"source answered {response.status}", f"http_{response.status}", retry_after)


def refusal(status: int, url: URL) -> FerryError:
    """The permanent error for a final non-2xx status."""
    shown = url.with_query(None)
    if status in (404, 410):
        return NotFound(f"source answered {status} for {shown}", reason="SOURCE_NOT_FOUND")
    if status in (401, 403):
        return PermissionDenied(f"source refused access ({status}) to {shown}", reason="SOURCE_FORBIDDEN")
    return FailedPrecondition(f"source answered {status} for {shown}", reason="SOURCE_REFUSED")


class HttpSource:
    """`trusted_origin`, the stack's own CDN as configured, is reached without the guard: only a URL under
    it that a caller asked for, never a redirect to it (an outside server could point there)."""

    def __init__(
        self,
        guard: NetworkGuard,
        config: DownloaderConfig,
        metrics: StackMetrics,
        trusted_origin: UrlPrefix | None = None,
    ) -> None:
        self._guard = guard
        self._config = config
        self._metrics = metrics
        self._trusted_origin = trusted_origin
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    def _client(self, *, trusted: bool) -> aiohttp.ClientSession:
        if trusted not in self._sessions:  # created lazily: it must live on the serving loop
            resolver = None if trusted else self._guard.resolver()
            self._sessions[trusted] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=256),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self._config.connect_timeout_seconds,
                    sock_read=self._config.read_timeout_seconds,
                ),
                trust_env=False,  # no proxy from the environment may sidestep the guard
                auto_decompress=False,  # store what the source serves, byte for byte
            )
        return self._sessions[trusted]

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    def _trusted(self, url: str) -> bool:
        return self._trusted_origin is not None and self._trusted_origin.covers(url)

    def check_url(self, url: str) -> None:
        """Refuse what the guard refuses before touching disk, unless `url` is under the trusted origin."""
        if not self._trusted(url):
            self._guard.check_url(url)

    async def _open(self, method: str, url: str, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """The final response after following redirects; every hop passes the guard, bar a trusted first one."""
        trusted = self._trusted(url)
        current = URL(url) if trusted else self._guard.check_url(url)
        sent = dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                client = self._client(trusted=trusted)
                response = await client.request(method, current, headers=sent, allow_redirects=False)
            except AddressBlocked:
                raise  # from the resolver, unwrapped by aiohttp: never retried
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                raise Transient(f"{type(error).__name__}: {error}", "connection") from error
            if response.status not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise FailedPrecondition(
                    f"redirect without Location from {current.with_query(None)}", reason="BAD_REDIRECT"
                )
            following = self._guard.check_url(current.join(URL(location)))
            if following.origin() != current.origin():
                sent = {k: v for k, v in sent.items() if k.lower() not in CREDENTIAL_HEADERS}
            if response.status == 303:
                method = "GET" if method != "HEAD" else method
            current, trusted = following, False
        raise FailedPrecondition(f"more than {MAX_REDIRECTS} redirects from {url}", reason="TOO_MANY_REDIRECTS")

    async def get(self, url: str, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """The final response to a GET of `url`, every hop past the guard (Transient when nothing answers)."""
        return await self._open("GET", url, headers)

    async def head(self, url: str, headers: Mapping[str, str]) -> RemoteFile | None:
        """What the source says about `url` without its body; None when HEAD is not answered usefully."""
        try:
            response = await self._open("HEAD", url, {**headers, "Accept-Encoding": "identity"})
        except Transient:
            return None
        async with response:
            if response.status != 200:
                return None
            return self._describe(url, response)

    def _describe(self, url: str, response: aiohttp.ClientResponse) -> RemoteFile:
        return RemoteFile(
            size=response.content_length,
            etag=response.headers.get("ETag"),
            last_modified=response.headers.get("Last-Modified"),
            content_type=response.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip(),
            file_name=choose_file_name(url, response.headers.get("Content-Disposition")),
            accepts_ranges=response.headers.get("Accept-Ranges", "").lower() == "bytes",
        )

    async def fetch(self, job: FetchJob, out: AtomicFile) -> RemoteFile:
        """Stream the job's body into `out`, retrying and resuming; returns what the source said."""
        remote: RemoteFile | None = None
        retries = self._config.retries
        for attempt in range(retries + 1):
            try:
                return await self._attempt(job, out, remote)
            except Transient as failure:
                if isinstance(failure, _CutShort):
                    remote = failure.remote  # what a resume must match
                await self.pause_before_retry(job.url, attempt, failure)
        raise AssertionError("unreachable")

    async def pause_before_retry(self, url: str, attempt: int, failure: Transient, part: str = "") -> None:
        """Wait before retrying `url` (`part` of it: " on bytes A-B") after attempt number `attempt` (from 0)
        failed with `failure`; Unavailable once the retries are spent."""
        retries = self._config.retries
        if attempt == retries:
            raise Unavailable(
                f"source failed {retries + 1} times{part}, last: {failure}", reason="SOURCE_UNAVAILABLE"
            ) from None
        delay = self._retry_delay(attempt, failure.retry_after)
        self._metrics.download_retries.labels(failure.cause).inc()
        log.info("retrying %s%s in %.2fs after: %s", url_for_log(url), part, delay, failure)
        await asyncio.sleep(delay)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number `attempt` (from 0): the source's Retry-After when it gave one."""
        if retry_after is not None:
            if retry_after > MAX_RETRY_AFTER_SECONDS:
                raise Unavailable(f"source asks to retry after {retry_after:.0f}s", reason="SOURCE_UNAVAILABLE")
            return retry_after
        # Capped where the source's own Retry-After stops being heeded: no longer than a source may ask for.
        return backoff_seconds(attempt, self._config.retry_backoff_seconds, MAX_RETRY_AFTER_SECONDS)

    async def _restart(self, out: AtomicFile) -> None:
        """Drop the bytes a cut-short attempt kept: this one cannot continue them."""
        await out.truncate()
        self._metrics.download_resumes.labels("restarted").inc()

    async def _attempt(self, job: FetchJob, out: AtomicFile, known: RemoteFile | None) -> RemoteFile:
        limit = job.limit
        request = {**job.headers, "Accept-Encoding": "identity"}
        resuming = bool(out.size and known and known.accepts_ranges and known.validator and known.size)
        if resuming:
            assert known is not None and known.validator is not None
            request["Range"] = f"bytes={out.size}-"
            request["If-Range"] = known.validator
        elif out.size:
            await self._restart(out)
        response = await self._open("GET", job.url, request)
        async with response:
            raise_if_transient(response)
            if response.status == 206 and resuming:
                assert known is not None
                content_range = response.headers.get("Content-Range", "")
                if not (content_range.startswith(f"bytes {out.size}-") and content_range.endswith(f"/{known.size}")):
                    await self._restart(out)
                    raise Transient(
                        f"source answered range {content_range!r}, which does not continue the file", "bad_range"
                    )
                self._metrics.download_resumes.labels("resumed").inc()
                remote = known
            elif response.status == 200:
                if out.size:  # the source ignored the range, or the file changed: start over
                    await self._restart(out)
                remote = self._describe(job.url, response)
                if known is None:
                    if limit is not None and remote.size is not None and remote.size > limit:
                        raise ResourceExhausted(
                            f"source declares {remote.size} bytes, over the {limit}-byte limit", reason="FILE_TOO_LARGE"
                        )
                    await job.on_started(remote)
            else:
                raise refusal(response.status, response.url)
            try:
                async for piece in response.content.iter_any():
                    await out.write(piece)
                    if limit is not None and out.size > limit:
                        raise ResourceExhausted(f"body grew past the {limit}-byte limit", reason="FILE_TOO_LARGE")
                    job.on_progress(out.size)
            except BODY_CUT as error:
                # Keep what arrived: the next attempt resumes from it if it can.
                raise _CutShort(remote, f"body cut short at {out.size} bytes: {type(error).__name__}") from error
            if remote.size is not None and out.size != remote.size:
                raise _CutShort(remote, f"body ended at {out.size} of {remote.size} bytes")
            return remote
