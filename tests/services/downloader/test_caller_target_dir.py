"""`download_file(url, target_dir=...)` as the reference toolkit means it: an absolute `target_dir` is a
folder on the caller's machine, a relative one lies under the service's data dir.

The service keeps the file in its URL cache; the SDK links it (or copies it, or streams it through
`Read`) into the caller's folder under a temp name and renames it. The reference's own examples
(`target_dir="/tmp/inputs"`, `"/data/inputs"`) name folders outside the service's data roots.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.services.config import DownloaderConfig
from tests.services.downloader.helpers import leftovers

CONFIG = DownloaderConfig(allow_private_networks=True, chunk_mib=1, retries=1, retry_backoff_seconds=0.01)


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


BODY = os.urandom((1 << 20) + 123)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder of the caller's, outside the service's data roots (like the reference's /tmp/inputs)."""
    return tmp_path / "caller" / "inputs"


def test_an_absolute_target_dir_is_a_folder_of_the_callers_and_the_file_is_linked_there(
    client, http_server, inputs, data_dir
):
    url = http_server.add_file("photo.png", BODY)

    path = client.download_file(url, target_dir=inputs)

    assert path == inputs / "photo.png" and path.read_bytes() == BODY
    cached = next((data_dir / ".ferry" / "cache").rglob("photo.png"))
    assert path.stat().st_ino == cached.stat().st_ino, "same filesystem: a hard link, no copy"
    assert leftovers(inputs.parent) == [] and leftovers(data_dir) == []


def test_the_reference_examples_target_dirs_work_as_written(client, http_server, tmp_path):
    # "/tmp/inputs" and "/data/inputs" verbatim would touch the machine's real folders: the same
    # absolute form under this test's own temp dir.
    url = http_server.add_file("video.mp4", BODY)
    for folder in ("tmp/inputs", "data/inputs"):
        assert client.download_file(url, target_dir=str(tmp_path / folder)).read_bytes() == BODY


def test_a_repeat_is_a_cache_hit_that_transfers_no_body_and_leaves_the_file_alone(client, http_server, inputs):
    url = http_server.add_file("weights.bin", BODY)
    first = client.download_file(url, target_dir=inputs)
    inode = first.stat().st_ino

    again = client.download_file(url, target_dir=inputs)

    assert again == first and again.stat().st_ino == inode
    assert len(http_server.gets("/weights.bin")) == 1, "the repeat cost a HEAD, not a GET"


def test_force_downloads_again_and_replaces_the_file_whole(client, http_server, inputs):
    url = http_server.add_file("fresh.bin", BODY)
    client.download_file(url, target_dir=inputs)
    http_server.add_file("fresh.bin", BODY[::-1])  # same size: only force (or a changed validator) sees it

    path = client.download_file(url, target_dir=inputs, force=True)

    assert path.read_bytes() == BODY[::-1]
    assert len(http_server.gets("/fresh.bin")) == 2


def test_a_file_edited_in_place_is_not_served_back_from_the_cache(client, http_server, inputs):
    url = http_server.add_file("edit.bin", BODY)
    path = client.download_file(url, target_dir=inputs)
    with open(path, "r+b") as f:  # the caller scribbles on its copy, which is the cache's inode
        f.write(b"scribble")

    again = client.download_file(url, target_dir=inputs)

    assert again.read_bytes() == BODY, "the service noticed its file changed and fetched it afresh"


def test_filesize_limit_refuses_and_leaves_nothing_in_the_callers_folder(client, http_server, inputs):
    url = http_server.add_file("big.bin", BODY)  # a little over 1 MiB

    with pytest.raises(ferry.FerryError) as caught:
        client.download_file(url, target_dir=inputs, filesize_limit=1)

    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not (inputs / "big.bin").exists() and leftovers(inputs.parent) == []


def test_concurrent_callers_share_one_transfer(client, http_server, inputs):
    url = http_server.add_file("popular.bin", BODY)
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(client.download_file(url, target_dir=inputs))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert paths == [inputs / "popular.bin"] * 8 and paths[0].read_bytes() == BODY
    assert len(http_server.gets("/popular.bin")) == 1
    assert leftovers(inputs) == []


def test_across_filesystems_the_file_is_copied_instead(client, http_server, inputs, data_dir, monkeypatch):
    url = http_server.add_file("copied.bin", BODY)

    def cross_device(source, destination, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)  # as os.link fails between two filesystems
    path = client.download_file(url, target_dir=inputs)

    assert path.read_bytes() == BODY
    assert path.stat().st_ino != next((data_dir / ".ferry" / "cache").rglob("copied.bin")).stat().st_ino
    assert leftovers(inputs) == []


def test_without_the_data_dir_the_file_is_streamed_and_a_repeat_reads_nothing(
    grpc_addr, grpc_server, http_server, inputs, data_dir
):
    url = http_server.add_file("remote.bin", BODY)
    with ferry.Client(grpc_addr, shared_data_dir=False) as remote:
        path = remote.download_file(url, target_dir=inputs)
        inode = path.stat().st_ino
        again = remote.download_file(url, target_dir=inputs)

    assert path == again == inputs / "remote.bin" and path.read_bytes() == BODY
    assert again.stat().st_ino == inode, "the service's copy was current: nothing was streamed again"
    assert path.stat().st_ino != next((data_dir / ".ferry" / "cache").rglob("remote.bin")).stat().st_ino


def test_a_relative_target_dir_still_lies_under_the_services_data_dir(client, http_server, data_dir):
    url = http_server.add_file("rel.bin", BODY)
    assert client.download_file(url, target_dir="models") == data_dir / "models" / "rel.bin"


def test_raw_grpc_callers_keep_the_services_root_rules(grpc_stub, http_server, inputs):
    from ferry.v1 import downloader_pb2

    url = http_server.add_file("raw.bin", BODY)
    with pytest.raises(grpc.RpcError) as caught:
        list(grpc_stub.Download(downloader_pb2.DownloadRequest(url=url, target_dir=str(inputs))))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert http_server.gets("/raw.bin") == []


async def test_the_async_twin_places_files_the_same_way(grpc_addr, grpc_server, http_server, inputs):
    url = http_server.add_file("async.bin", BODY)
    async with ferry.AsyncClient(grpc_addr) as client:
        path = await client.download_file(url, target_dir=inputs)
        again = await client.download_file(url, target_dir=inputs)
    assert path == again == inputs / "async.bin" and path.read_bytes() == BODY
    assert len(http_server.gets("/async.bin")) == 1


async def test_the_async_twin_streams_into_the_callers_folder_without_the_data_dir(
    grpc_addr, grpc_server, http_server, inputs
):
    url = http_server.add_file("async-remote.bin", BODY)
    async with ferry.AsyncClient(grpc_addr, shared_data_dir=False) as client:
        path = await client.download_file(url, target_dir=inputs)
    assert path == inputs / "async-remote.bin" and path.read_bytes() == BODY
    assert leftovers(inputs) == []
