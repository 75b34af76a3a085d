"""Helpers the downloader's tests share (the fixtures that host it are in this folder's conftest)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from ferry.v1 import downloader_pb2


def events(stub, **fields) -> list[downloader_pb2.DownloadResponse]:
    return list(stub.Download(downloader_pb2.DownloadRequest(**fields)))


def status_of(stub, **fields) -> tuple[grpc.StatusCode, str]:
    """The status a Download ends with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        events(stub, **fields)
    return caught.value.code(), caught.value.details()


def leftovers(root: Path) -> list[Path]:
    """Temp files anywhere under `root`: there must never be any once a call has ended."""
    return sorted(root.rglob("*.ferry-part"))
