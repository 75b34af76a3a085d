"""`Downloader.read`, the engine side of `Read`, in process: a header, then the range's bytes in bounded chunks.

The RPC's own tests (paths outside the roots, missing files, offset and length through gRPC) are in
test_downloader.py; these pin what the engine itself guarantees.
"""

from __future__ import annotations

import os
from contextlib import aclosing
from pathlib import Path

import pytest

from ferry.errors import InvalidArgument
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader
from ferry.services.downloader.locks import path_lock_key
from ferry.services.downloader.reads import ReadHeader
from ferry.sizes import MESSAGE_BYTES

BODY = os.urandom(2 * MESSAGE_BYTES + 123)


@pytest.fixture
async def downloader(tmp_path: Path):
    downloader = Downloader(DownloaderConfig(), tmp_path / "data")
    yield downloader
    await downloader.close()


@pytest.fixture
def stored(downloader: Downloader) -> Path:
    path = downloader.roots.data_dir / "kept" / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(BODY)
    return path


async def read_all(
    downloader: Downloader, path: str, offset: int = 0, length: int | None = None
) -> list[ReadHeader | bytes]:
    return [part async for part in downloader.read(path, offset, length)]


async def test_the_header_names_the_whole_file_and_the_chunks_hold_its_bytes_at_most_a_mib_each(
    downloader: Downloader, stored: Path
) -> None:
    header, *chunks = await read_all(downloader, "kept/clip.mp4")

    assert header == ReadHeader(file_size=len(BODY), file_name="clip.mp4", content_type="video/mp4")
    assert all(isinstance(c, bytes) and len(c) <= MESSAGE_BYTES for c in chunks)
    assert b"".join(chunks) == BODY


@pytest.mark.parametrize(
    ("offset", "length"), [(5, 10), (MESSAGE_BYTES - 1, MESSAGE_BYTES + 2), (100, None), (len(BODY), 7)]
)
async def test_a_range_reads_from_its_offset_for_its_length_and_stops_at_the_end(
    downloader: Downloader, stored: Path, offset: int, length: int | None
) -> None:
    header, *chunks = await read_all(downloader, str(stored), offset, length)

    assert isinstance(header, ReadHeader) and header.file_size == len(BODY)
    assert b"".join(chunks) == BODY[offset : None if length is None else offset + length]


async def test_an_offset_past_the_end_is_refused_before_any_header(downloader: Downloader, stored: Path) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await read_all(downloader, str(stored), len(BODY) + 1)

    assert refused.value.reason == "BAD_RANGE"


async def test_the_reader_lock_is_held_while_reading_and_let_go_when_the_reader_leaves_early(
    downloader: Downloader, stored: Path
) -> None:
    key = path_lock_key(stored)
    async with aclosing(downloader.read(str(stored))) as parts:
        assert isinstance(await anext(parts), ReadHeader)
        assert downloader.locks.try_exclusive(key) is None, "eviction must pass over a file being read"

    free = downloader.locks.try_exclusive(key)
    assert free is not None, "a reader that left still holds the file"
    os.close(free)
