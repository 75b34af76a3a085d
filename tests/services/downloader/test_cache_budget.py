"""With a cache budget, the least recently used downloads are evicted — never one being read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.services.config import DownloaderConfig
from ferry.services.downloader.locks import path_lock_key
from ferry.services.downloader.records import flight_key
from ferry.sizes import MIB
from ferry.v1 import downloader_pb2
from tests.harness import wait_for
from tests.services.downloader.helpers import events

CONFIG = DownloaderConfig(allow_private_networks=True, cache_budget_mib=30, chunk_mib=1)


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


def fetch(stub, url) -> Path:
    return Path(events(stub, url=url, target_dir="budget")[-1].completed.path)


def eventually_gone(path: Path) -> bool:
    """Eviction runs after the download returns, off the event loop."""
    return wait_for(lambda: not path.exists(), f"{path.name} to be removed")


def test_least_recently_used_goes_first_and_a_file_being_read_stays(grpc_stub, grpc_channel, http_server):
    big = fetch(grpc_stub, http_server.add_file("big.bin", os.urandom(24 * MIB)))
    small = fetch(grpc_stub, http_server.add_file("small.bin", os.urandom(3 * MIB)))
    reading = grpc_stub.Read(downloader_pb2.ReadRequest(path=str(big)))
    assert next(reading).WhichOneof("message") == "header"  # the reader now holds `big`

    third = fetch(grpc_stub, http_server.add_file("third.bin", os.urandom(4 * MIB)))  # 31 MiB > 30
    assert eventually_gone(small), "the oldest file not being read was evicted"
    assert big.exists() and third.exists()

    reading.cancel()
    fetch(grpc_stub, http_server.add_file("fourth.bin", os.urandom(4 * MIB)))  # 32 MiB > 30 again
    assert eventually_gone(big), "once nobody reads it, the least recently used goes"
    assert third.exists()


def test_a_cache_hit_counts_as_use(grpc_stub, http_server):
    first = fetch(grpc_stub, http_server.add_file("first.bin", os.urandom(12 * MIB)))
    second = fetch(grpc_stub, http_server.add_file("second.bin", os.urandom(12 * MIB)))
    assert events(grpc_stub, url=http_server.url("first.bin"), target_dir="budget")[-1].completed.cache_hit
    fetch(grpc_stub, http_server.add_file("last.bin", os.urandom(12 * MIB)))
    assert eventually_gone(second) and first.exists()


def test_an_evicted_download_takes_its_record_and_lock_files_along(grpc_stub, http_server, data_dir):
    url = http_server.add_file("evicted.bin", os.urandom(20 * MIB))
    evicted = fetch(grpc_stub, url)
    bookkeeping = data_dir / ".ferry"
    key = flight_key(evicted.parent, url)
    assert (bookkeeping / "records" / f"{key}.json").exists() and (bookkeeping / "locks" / f"{key}.lock").exists()
    fetch(grpc_stub, http_server.add_file("newer.bin", os.urandom(20 * MIB)))
    assert eventually_gone(evicted)
    assert eventually_gone(bookkeeping / "records" / f"{key}.json")
    assert eventually_gone(bookkeeping / "locks" / f"{key}.lock")
    assert not (bookkeeping / "locks" / f"{path_lock_key(evicted)}.lock").exists()
