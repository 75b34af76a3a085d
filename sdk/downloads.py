"""`download_file` and `download_model_weights` over the DownloaderService.

The service writes into its data dir. When the caller shares that dir (same
machine or a shared volume) the returned path is used as is; otherwise the
SDK streams the file through `Read` into a local folder, atomically. Sharing
is detected (the path exists here with the announced size) unless
`FERRY_SHARED_DATA_DIR` (or the client's `shared_data_dir`) says otherwise.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ferry.request_scope import current_scope
from ferry.v1 import downloader_pb2

MIB = 1 << 20


@dataclass(frozen=True)
class DownloadProgress:
    """What `on_progress` receives."""

    bytes_done: int
    total_bytes: int | None
    bytes_per_second: float
    file_name: str


ProgressCallback = Callable[[DownloadProgress], None]


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
            self.completed = response.completed

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
    """One SDK download: the request to send, and where its result ends up on this machine.

    The sync and async clients differ only in how they await the calls.
    """

    url: str
    target_dir: str | os.PathLike[str] | None
    model_weights: bool
    sharing: bool | None
    request: downloader_pb2.DownloadRequest

    @classmethod
    def create(
        cls,
        url: str,
        target_dir: str | os.PathLike[str] | None,
        force: bool,
        request_headers: Mapping[str, str] | None,
        filesize_limit_mb: float | None,
        model_weights: bool,
        shared_data_dir: bool | None,
    ) -> DownloadPlan:
        sharing = sharing_setting(shared_data_dir)
        # A client known not to share the data dir means `target_dir` locally;
        # the service then uses a fresh temp folder of its own.
        remote_dir = None if sharing is False else target_dir
        request = downloader_pb2.DownloadRequest(
            url=url,
            target_dir=os.fspath(remote_dir) if remote_dir is not None else "",
            force=force,
            request_headers=dict(request_headers or {}),
            kind=downloader_pb2.DOWNLOAD_KIND_MODEL_WEIGHTS if model_weights else downloader_pb2.DOWNLOAD_KIND_FILE,
        )
        if filesize_limit_mb is not None:
            request.filesize_limit_bytes = int(filesize_limit_mb * MIB)  # MB like the reference toolkit; bytes on the wire
        return cls(url, target_dir, model_weights, sharing, request)

    def local_path(self, completed: downloader_pb2.DownloadCompleted) -> Path | None:
        """The result when no `Read` is needed: the service's own path, or weights already fetched here."""
        sharing = self.sharing
        if sharing is None:
            served = Path(completed.path)
            sharing = served.is_file() and served.stat().st_size == completed.file_size
        if sharing:
            return Path(completed.path)
        destination = self.destination(completed)
        if self.model_weights and destination.is_file() and destination.stat().st_size == completed.file_size:
            return destination
        return None

    def destination(self, completed: downloader_pb2.DownloadCompleted) -> Path:
        """Where a file fetched through `Read` lands on this machine."""
        if self.model_weights:
            digest = hashlib.sha256(self.url.encode()).hexdigest()
            folder = Path(tempfile.gettempdir()) / "ferry-model-weights" / digest
        elif self.target_dir is not None:
            folder = Path(self.target_dir)
        else:
            folder = Path(tempfile.mkdtemp(prefix="ferry-download-"))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / completed.file_name

    @staticmethod
    def read_request(completed: downloader_pb2.DownloadCompleted) -> downloader_pb2.ReadRequest:
        return downloader_pb2.ReadRequest(path=completed.path)


class LocalFile:
    """Atomic local write: a hidden temp file beside the destination, fsync, rename."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.temp = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.ferry-part")
        self.file = open(self.temp, "wb")  # noqa: SIM115 (closed in commit/discard)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def commit(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.destination)
        return self.destination

    def discard(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


def write_read_stream(responses: Iterator[downloader_pb2.ReadResponse], destination: Path) -> Path:
    local = LocalFile(destination)
    try:
        for response in responses:
            if response.WhichOneof("message") == "chunk":
                local.write(response.chunk)
        return local.commit()
    finally:
        local.discard()


async def write_read_stream_async(responses: AsyncIterator[downloader_pb2.ReadResponse], destination: Path) -> Path:
    local = LocalFile(destination)
    try:
        async for response in responses:
            if response.WhichOneof("message") == "chunk":
                local.write(response.chunk)
        return local.commit()
    finally:
        local.discard()
