"""Ferry: move media in and out of GPU inference.

The SDK: typed clients for the ferry stack (`Client`, `AsyncClient`) and the
generated contract (`ferry.v1`). It stays light — grpcio, protobuf and numpy —
and never imports the services or torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Unpack

from ferry.app_requests import AsyncRequestHandle, RequestHandle, Status, SubmitOptions, SubscribeOptions
from ferry.client import AsyncClient, Client
from ferry.connection import Connection, StackTarget
from ferry.datauri import encode, encode_file, encode_image, image_bytes
from ferry.downloads import DownloadProgress, ProgressCallback
from ferry.errors import FerryError
from ferry.events import Completed, Event, InProgress, Queued
from ferry.realtime_connection import AsyncRealtimeConnection, RealtimeConnection
from ferry.request_scope import current_scope

__version__ = "0.1.0"

_lock = threading.Lock()
_from_environment: tuple[StackTarget, Client] | None = None
_for_stacks: dict[StackTarget, Client] = {}  # one per stack hosting apps in this process


def default_client() -> Client:
    """The client the module-level helpers use, reused while its target holds.

    Inside an app hosted by `ferry serve` (its `setup()` and handlers), the
    stack hosting it; elsewhere FERRY_ADDRESS / FERRY_TOKEN / FERRY_CA_FILE /
    FERRY_ENCODER_ADDRESSES.
    """
    global _from_environment
    with _lock:
        if (stack := current_scope().stack) is not None:
            if stack not in _for_stacks:
                _for_stacks[stack] = _client_for(stack)
            return _for_stacks[stack]
        target = StackTarget.from_environment()
        if _from_environment is None or _from_environment[0] != target:
            if _from_environment is not None:
                _from_environment[1].close()
            _from_environment = (target, _client_for(target))
        return _from_environment[1]


def _client_for(target: StackTarget) -> Client:
    connection = target.connection
    return Client(
        connection.address,
        token=connection.token,
        ca_file=connection.ca_file,
        tls=connection.tls,
        encoder_addresses=target.encoder_addresses,
    )


def download_file(
    url: str,
    target_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    request_headers: Mapping[str, str] | None = None,
    filesize_limit: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Download `url` through the stack at FERRY_ADDRESS; see `Client.download_file`."""
    return default_client().download_file(
        url,
        target_dir,
        force=force,
        request_headers=request_headers,
        filesize_limit=filesize_limit,
        on_progress=on_progress,
    )


def download_model_weights(url: str, force: bool = False, request_headers: Mapping[str, str] | None = None) -> Path:
    """Download model weights once through the stack at FERRY_ADDRESS; see `Client.download_model_weights`."""
    return default_client().download_model_weights(url, force=force, request_headers=request_headers)


def upload_file(path: str | os.PathLike[str], expires_in: int | None = None) -> str:
    """Store a local file through the stack at FERRY_ADDRESS; returns its URL."""
    return default_client().upload_file(path, expires_in=expires_in).url


def upload(data: bytes, content_type: str, file_name: str | None = None, expires_in: int | None = None) -> str:
    """Store bytes; returns their URL."""
    return default_client().upload_bytes(data, content_type, file_name, expires_in).url


def upload_image(image: Any, format: str = "jpeg", expires_in: int | None = None) -> str:
    """Store a PIL image (encoded here with Pillow); returns its URL."""
    data, content_type = image_bytes(image, format)
    return upload(data, content_type, f"image.{content_type.split('/')[1]}", expires_in)


from ferry.toolkit import Audio, CompressedFile, File, Image, Video  # noqa: E402 (uses default_client lazily)


def run(
    app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Run an app endpoint through the stack at FERRY_ADDRESS and return its output; see `Client.run`."""
    return default_client().run(app, arguments, path, expires_in=expires_in, timeout=timeout)


def submit(app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[SubmitOptions]) -> RequestHandle:
    """Queue a request; the handle polls (`status`), follows (`iter_events`), waits (`get`) or cancels it."""
    return default_client().submit(app, arguments, path, **options)


def subscribe(
    app: str, arguments: dict[str, Any], path: str = "/", **options: Unpack[SubscribeOptions]
) -> dict[str, Any]:
    """Run and follow a request to its output; see `Client.subscribe`."""
    return default_client().subscribe(app, arguments, path, **options)


def stream(app: str, arguments: dict[str, Any], path: str = "/", expires_in: int | None = None) -> Iterator[Event]:
    """Every event of a request (`ferry.events`); see `Client.stream`."""
    return default_client().stream(app, arguments, path, expires_in)


def realtime(app: str, path: str = "/") -> RealtimeConnection:
    """Open one call to a realtime endpoint through the stack at FERRY_ADDRESS; see `Client.realtime`."""
    return default_client().realtime(app, path)


__all__ = [
    "AsyncClient",
    "AsyncRealtimeConnection",
    "AsyncRequestHandle",
    "Audio",
    "Client",
    "Completed",
    "CompressedFile",
    "Connection",
    "DownloadProgress",
    "FerryError",
    "File",
    "Image",
    "InProgress",
    "Queued",
    "RealtimeConnection",
    "RequestHandle",
    "StackTarget",
    "Status",
    "Video",
    "__version__",
    "default_client",
    "download_file",
    "download_model_weights",
    "encode",
    "encode_file",
    "encode_image",
    "realtime",
    "run",
    "stream",
    "submit",
    "subscribe",
    "upload",
    "upload_file",
    "upload_image",
]
