"""A real DownloaderService hosted per test module under pytest-grpc's fixtures.

A module says how its downloader is configured with a `downloader_config` fixture, or replaces
`downloader` (or `data_dir`) with its own when it needs more than a config (a trusted CDN, own storage).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ferry
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader
from ferry.services.downloader.servicer import DownloaderServicer
from ferry.v1 import downloader_pb2_grpc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def downloader(downloader_config: DownloaderConfig, data_dir: Path, background_loop) -> Iterator[Downloader]:
    downloader = Downloader(downloader_config, data_dir)
    yield downloader
    background_loop.run(downloader.close())


@pytest.fixture(scope="module")
def grpc_servicer(downloader: Downloader) -> DownloaderServicer:
    return DownloaderServicer(downloader)


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return downloader_pb2_grpc.add_DownloaderServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return downloader_pb2_grpc.DownloaderServiceStub


@pytest.fixture
def client(grpc_addr, grpc_server) -> Iterator[ferry.Client]:
    with ferry.Client(grpc_addr) as client:
        yield client
