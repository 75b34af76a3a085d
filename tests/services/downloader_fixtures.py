"""Hosting a real DownloaderService for a test module, and helpers its tests share.

A module imports the fixtures it uses and says how its downloader is configured:

    from tests.services.downloader_fixtures import client, downloader, grpc_add_to_server, grpc_servicer, grpc_stub_cls

    @pytest.fixture(scope="module")
    def downloader_config() -> DownloaderConfig:
        return CONFIG
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import ferry
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader
from ferry.services.downloader.servicer import DownloaderServicer
from ferry.v1 import downloader_pb2, downloader_pb2_grpc


@pytest.fixture(scope="module")
def grpc_servicer(downloader: Downloader) -> DownloaderServicer:
    """pytest-grpc's servicer: the test module's own `downloader` fixture, served."""
    return DownloaderServicer(downloader)


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return downloader_pb2_grpc.add_DownloaderServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return downloader_pb2_grpc.DownloaderServiceStub


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def downloader(downloader_config: DownloaderConfig, data_dir: Path, background_loop):
    """A Downloader built from the test module's own `downloader_config` fixture, on a module-scoped data dir."""
    downloader = Downloader(downloader_config, data_dir)
    yield downloader
    background_loop.run(downloader.close())


@pytest.fixture
def client(grpc_addr, grpc_server):
    with ferry.Client(grpc_addr) as client:
        yield client


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
