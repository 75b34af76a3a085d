"""`download_file` and `download_model_weights` over the DownloaderService.

The service writes into its data dir. When the caller shares that dir (same
machine or a shared volume) the returned path is used as is, or linked to
where the caller asked; otherwise the SDK streams the file through `Read`
into a local folder, atomically. Sharing is detected (the path exists here
with the announced size) unless `FERRY_SHARED_DATA_DIR` (or the client's
`shared_data_dir`) says otherwise. See `DownloadPlan` for what `target_dir` means.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypedDict

from ferry.atomic_files import PendingFile, atomic_write, link_into_place, temp_beside
from ferry.errors import Internal
from ferry.file_names import safe_file_name
from ferry.request_scope import current_scope
from ferry.sizes import MIB
from ferry.v1 import downloader_pb2


@dataclass(frozen=True)
class DownloadProgress:
    """What `on_progress` receives: bytes as they arrive, or once, with `cache_hit`, when none had to."""

    bytes_done: int
    total_bytes: int | None
    bytes_per_second: float
    file_name: str
    # The stack's copy was current: this is the only report, and nothing was transferred.
    cache_hit: bool = False


ProgressCallback = Callable[[DownloadProgress], None]


class WeightsOptions(TypedDict, total=False):
    """`download_model_weights`'s keywords: re-fetch even if stored, headers for the source, progress reports."""

    force: bool
    request_headers: Mapping[str, str] | None
    on_progress: ProgressCallback | None


class DownloadOptions(WeightsOptions, total=False):
    """`download_file`'s keywords: those of weights, and a size limit in MB."""

    filesize_limit: float | None


class EventReader:
    """Folds the Download stream into progress callbacks and the final `completed` message."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.file_name = ""
        self.total: int | None = None
        self.completed: downloader_pb2.DownloadCompleted | None = None

    def feed(self, response: downloader_pb2.DownloadResponse) -> None:
        kind = response.WhichOneof("event")
        if kind == "started":
            self.file_name = response.started.file_name
            self.total = response.started.total_bytes if response.started.HasField("total_bytes") else None
        elif kind == "progress" and self.on_progress is not None:
            p = response.progress
            self.on_progress(DownloadProgress(p.bytes_done, self.total, p.bytes_per_second, self.file_name))
        elif kind == "completed":
            self.completed = done = response.completed
            if done.cache_hit and self.on_progress is not None:
                self.on_progress(DownloadProgress(done.file_size, done.file_size, 0.0, done.file_name, cache_hit=True))

    def result(self) -> downloader_pb2.DownloadCompleted:
        if self.completed is None:
            raise RuntimeError("the Download stream ended without `completed`")
        return self.completed


def sharing_setting(configured: bool | None) -> bool | None:
    """Whether this client shares the service's data dir: True, False, or None to detect per download."""
    if configured is not None:
        return configured
    env = os.environ.get("FERRY_SHARED_DATA_DIR", "auto").strip().lower()
    return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(env)


def already_downloaded(url: str, target_dir: object, force: bool, model_weights: bool) -> Path | None:
    """Inside a handler: the runner's copy of an input URL, for a plain `download_file(url)` call.

    Every download asks this first, so it is also where a cancelled request's handler is stopped.
    """
    scope = current_scope()
    scope.raise_if_cancelled()
    if target_dir is not None or force or model_weights:
        return None  # the caller asked for something of its own
    return scope.downloaded_path(url)


@dataclass(frozen=True)
class DownloadPlan:
    """One SDK download: the request to send, and how its result becomes a path on this machine.

    `target_dir` means what the reference toolkit means by it:
    - None: a fresh folder (the service's, or a local temp folder when the data dir is not shared);
    - relative: under the service's data dir, as the service resolves it;
    - absolute: a folder on the caller's machine. The service keeps the file in
      its URL cache (DOWNLOAD_KIND_CACHE, so cache hits, `force`, limits and single
      flight hold as for any download) and this side places it there: a hard link
      when the cache is on this filesystem (reflink or copy across filesystems),
      else a `Read` stream. Either way it lands under a temp name and is renamed.
    A client that does not share the data dir treats any `target_dir` as local.
    The sync and async clients differ only in how they await the calls.
    """

    url: str
    # Where the file goes on this machine when the caller named a folder for it.
    local_dir: Path | None
    model_weights: bool
    force: bool
    sharing: bool | None
    request: downloader_pb2.DownloadRequest
    # Inside a handler, the runner's copy of this input: nothing to call.
    held: Path | None

    @classmethod
    def create(
        cls,
        url: str,
        target_dir: str | os.PathLike[str] | None,
        model_weights: bool,
        options: Mapping[str, Any],
        shared_data_dir: bool | None,
    ) -> DownloadPlan:
        """The plan for `url` given a `download_file` call's `DownloadOptions` (or weights' `WeightsOptions`)."""
        force = options.get("force", False)
        held = already_downloaded(url, target_dir, force, model_weights)
        sharing = sharing_setting(shared_data_dir)
        request = downloader_pb2.DownloadRequest(
            url=url,
            force=force,
            request_headers=dict(options.get("request_headers") or {}),
            kind=downloader_pb2.DOWNLOAD_KIND_FILE,
        )
        if (filesize_limit_mb := options.get("filesize_limit")) is not None:
            if not filesize_limit_mb > 0:
                raise ValueError(f"filesize_limit is in MB and must be > 0, got {filesize_limit_mb}")
            # MB like the reference toolkit; bytes on the wire
            request.filesize_limit_bytes = int(filesize_limit_mb * MIB)
        local_dir: Path | None = None
        if model_weights:
            request.kind = downloader_pb2.DOWNLOAD_KIND_MODEL_WEIGHTS
        elif target_dir is not None:
            folder = Path(target_dir)
            if folder.is_absolute() or sharing is False:
                request.kind = downloader_pb2.DOWNLOAD_KIND_CACHE
                local_dir = folder
            else:
                request.target_dir = os.fspath(folder)
        return cls(url, local_dir, model_weights, force, sharing, request, held)

    def finish(self, completed: downloader_pb2.DownloadCompleted) -> Path | None:
        """The local path when no `Read` is needed, placing the file first where the caller asked.

        Blocking (a link, or a copy across filesystems): the async client runs it in a thread.
        """
        served = Path(completed.path)
        shared = self.sharing
        if shared is None:
            shared = served.is_file() and served.stat().st_size == completed.file_size
        if self.local_dir is None:
            if shared:
                return served
            destination = self.destination(completed)
            if self.model_weights and _has_size(destination, completed.file_size):
                return destination
            return None
        destination = self.destination(completed)
        if shared:
            return place(served, destination)
        if completed.cache_hit and not self.force and _has_size(destination, completed.file_size):
            return destination  # the service's copy is current and this one is the same size (the reference's rule)
        return None

    def abandon(self, completed: downloader_pb2.DownloadCompleted) -> None:
        """Remove the file the service made for this call alone (a plain download, no folder named) once the
        call is cancelled after it came: the caller never gets its path, so nobody else would."""
        if self.request.kind != downloader_pb2.DOWNLOAD_KIND_FILE or self.request.target_dir:
            return
        served = Path(completed.path)
        if served.is_file():  # on this machine: the service shares its data dir
            shutil.rmtree(served.parent, ignore_errors=True)

    def destination(self, completed: downloader_pb2.DownloadCompleted) -> Path:
        """Where the file lands on this machine when it is placed or fetched through `Read`."""
        if self.local_dir is not None:
            folder = self.local_dir
        elif self.model_weights:
            digest = hashlib.sha256(self.url.encode()).hexdigest()
            folder = Path(tempfile.gettempdir()) / "ferry-model-weights" / digest
        else:
            folder = Path(tempfile.mkdtemp(prefix="ferry-download-"))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / _plain_name(completed.file_name)

    @staticmethod
    def read_request(completed: downloader_pb2.DownloadCompleted) -> downloader_pb2.ReadRequest:
        return downloader_pb2.ReadRequest(path=completed.path)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _plain_name(file_name: str) -> str:
    # The service names files safely; a path from the wire still never picks another folder here.
    name = safe_file_name(file_name)
    if name is None:
        raise Internal(f"the service answered an unusable file name {file_name[:100]!r}")
    return name


def place(source: Path, destination: Path) -> Path:
    """Make `destination` the file at `source`: a hard link, else a reflink, else a copy; atomically.

    Nothing is done when it already is that file (a cache hit placed before).
    A link shares the service's cache inode: editing the file in place changes
    its mtime, so the service's record stops vouching for it and the next call
    downloads afresh instead of serving the edit.
    """
    try:
        if destination.samefile(source):
            return destination
    except OSError:
        pass
    try:
        link_into_place(source, destination, temp_beside(destination))
    except OSError:  # another filesystem, or links not allowed: copy (a reflink where the filesystem can)
        with open(source, "rb") as reader, atomic_write(destination) as writer:
            _clone_or_copy(reader, writer)
    return destination


_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, xfs); fails elsewhere


def _clone_or_copy(reader: BinaryIO, writer: BinaryIO) -> None:
    try:
        fcntl.ioctl(writer.fileno(), _FICLONE, reader.fileno())
    except OSError:
        shutil.copyfileobj(reader, writer, MIB)


def write_read_stream(responses: Iterator[downloader_pb2.ReadResponse], destination: Path) -> Path:
    with atomic_write(destination) as file:
        for response in responses:
            if response.WhichOneof("message") == "chunk":
                file.write(response.chunk)
    return destination


async def write_read_stream_async(responses: AsyncIterable[downloader_pb2.ReadResponse], destination: Path) -> Path:
    """The asyncio twin of `write_read_stream`: disk writes and the fsync run in a thread, off the event loop."""
    local = await asyncio.to_thread(PendingFile, temp_beside(destination))
    try:
        async for response in responses:
            if response.WhichOneof("message") == "chunk":
                await asyncio.to_thread(local.file.write, response.chunk)
        await asyncio.to_thread(local.sync)
        return await asyncio.to_thread(local.commit, destination)
    finally:
        await asyncio.to_thread(local.discard)
