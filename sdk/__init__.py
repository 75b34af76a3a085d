"""Ferry: move media in and out of GPU inference.

The SDK: typed clients for the ferry stack (`Client`, `AsyncClient`) and the
generated contract (`ferry.v1`). It stays light — grpcio, protobuf and numpy —
and never imports the services or torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ferry.client import AsyncClient, Client
from ferry.connection import Connection
from ferry.downloads import DownloadProgress, ProgressCallback
from ferry.errors import FerryError

__version__ = "0.1.0"

_default: tuple[Connection, Client] | None = None


def default_client() -> Client:
    """The client module-level helpers use: FERRY_ADDRESS / FERRY_TOKEN / FERRY_CA_FILE, reused while they hold."""
    global _default
    wanted = Connection.resolve()
    if _default is None or _default[0] != wanted:
        if _default is not None:
            _default[1].close()
        _default = (wanted, Client())
    return _default[1]


def download_file(
    url: str,
    target_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    request_headers: Mapping[str, str] | None = None,
    filesize_limit: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Download `url` through the stack at FERRY_ADDRESS; see `Client.download_file`."""
    return default_client().download_file(url, target_dir, force, request_headers, filesize_limit, on_progress)


def download_model_weights(
    url: str, force: bool = False, request_headers: Mapping[str, str] | None = None
) -> Path:
    """Download model weights once through the stack at FERRY_ADDRESS; see `Client.download_model_weights`."""
    return default_client().download_model_weights(url, force, request_headers)


__all__ = [
    "AsyncClient",
    "Client",
    "Connection",
    "DownloadProgress",
    "FerryError",
    "__version__",
    "default_client",
    "download_file",
    "download_model_weights",
]
