"""Local storage: files land under DATA_DIR/files/<id>/<name>, served by the real embedded CDN.

Metadata sits in DATA_DIR/.ferry/storage, out of the CDN's reach. What every
backend does (names, lifetimes, multipart rules, the sweep) is specified once in
test_storage_contract.py; this module holds what is local storage's own: the
layout on disk, durability, and the CDN's view of expiry by the storage's clock.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from ferry.errors import NotFound, ResourceExhausted
from ferry.services.storage.base import NewObject, keyed_object_id
from ferry.services.storage.local import ID_PATTERN, LocalStorage
from tests.services.storage_fixtures import TurnedClock, put, send_part, served_local_storage

MAX_AGE = 3600.0


@pytest.fixture
def clock() -> TurnedClock:
    return TurnedClock()


@pytest.fixture
async def storage(tmp_path: Path, clock: TurnedClock) -> AsyncIterator[LocalStorage]:
    """Local storage under tmp_path/data on `clock`, served by a real CDN on a free loopback port."""
    async with served_local_storage(
        tmp_path / "data" / "files", multipart_max_age_seconds=MAX_AGE, clock=clock
    ) as local:
        yield local


async def fetch(url: str) -> tuple[int, bytes, str | None]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read(), response.headers.get("Content-Type")


def fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync from now on fails as on a full disk (until `monkeypatch.undo()`)."""

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)


def object_folders(storage: LocalStorage) -> list[Path]:
    return list(storage.root.iterdir())


async def test_a_stored_files_url_is_the_cdns_files_path_with_its_name_quoted(
    storage: LocalStorage, tmp_path: Path
) -> None:
    stored = await put(storage, tmp_path, b"\x89PNG pixels", file_name="cat photo.png")

    assert stored.url.endswith(f"/files/{stored.key}/cat%20photo.png")


async def test_bytes_in_memory_become_the_file_and_its_sidecar_with_no_temp_file_on_the_way(
    storage: LocalStorage, tmp_path: Path
) -> None:
    stored = await storage.put_bytes(
        b"\xff\xd8 jpeg", NewObject(file_name="out.jpg", content_type="image/jpeg", expires_in=60)
    )

    data_dir = tmp_path / "data"
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file()) == sorted(
        [Path("files", stored.key, "out.jpg"), Path(".ferry", "storage", "objects", f"{stored.key}.json")]
    )  # the file and its sidecar, no temp file on the way


async def test_bytes_that_cannot_be_written_leave_no_object_behind(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_the_disk(monkeypatch)
    with pytest.raises(ResourceExhausted) as full:
        await storage.put_bytes(b"pixels", NewObject(file_name="out.png", content_type="image/png", expires_in=None))

    assert full.value.reason == "DISK_FULL"
    assert object_folders(storage) == []
    assert list(storage.objects.iterdir()) == []


@pytest.mark.parametrize("how", ["put_file", "put_bytes", "multipart"])
async def test_stored_files_are_read_only_since_published_bytes_never_change(
    storage: LocalStorage, tmp_path: Path, how: str
) -> None:
    # Downloads of the stack's own URLs hard-link these files into apps' input folders.
    if how == "put_file":
        stored = await put(storage, tmp_path, b"frames")
    elif how == "put_bytes":
        stored = await storage.put_bytes(
            b"frames", NewObject(file_name="a.bin", content_type="application/octet-stream", expires_in=None)
        )
    else:
        upload_id = await storage.create_multipart(
            file_name="a.bin", content_type="application/octet-stream", expires_in=None
        )
        etag = await send_part(storage, tmp_path, upload_id, 1, b"frames")
        stored = await storage.complete_multipart(upload_id, [(1, etag)])

    (path,) = (storage.root / stored.key).iterdir()
    assert path.stat().st_mode & 0o777 == 0o444


async def test_ids_are_128_random_bits_and_never_repeat(storage: LocalStorage, tmp_path: Path) -> None:
    keys = [(await put(storage, tmp_path, b"x")).key for _ in range(20)]

    assert all(ID_PATTERN.fullmatch(key) for key in keys)  # 22 base64url characters: 132 bits, of which 128 random
    assert len(set(keys)) == len(keys)


async def test_across_filesystems_the_file_is_copied_whole_instead_of_linked(
    storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def other_filesystem(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", other_filesystem)
    stored = await put(storage, tmp_path, b"frames" * 1000, file_name="a.mp4")

    assert await fetch(stored.url) == (200, b"frames" * 1000, "image/png")
    assert [p.name for p in (storage.root / stored.key).iterdir()] == ["a.mp4"]  # no temp file beside it


async def test_metadata_lives_outside_the_served_tree(storage: LocalStorage, tmp_path: Path) -> None:
    stored = await put(storage, tmp_path, b"abc", expires_in=600)
    data_dir = tmp_path / "data"

    assert [p.name for p in (data_dir / "files" / stored.key).iterdir()] == ["out.png"]
    record = json.loads((data_dir / ".ferry" / "storage" / "objects" / f"{stored.key}.json").read_text())
    assert record == {
        "file_name": "out.png",
        "content_type": "image/png",
        "size": 3,
        "sha256": stored.sha256,
        "expires_at": stored.expires_at.isoformat() if stored.expires_at else None,
    }


async def test_an_expired_object_is_gone_from_the_cdn_before_the_sweep_runs(
    storage: LocalStorage, tmp_path: Path, clock: TurnedClock
) -> None:
    stored = await put(storage, tmp_path, b"brief", expires_in=1)
    assert (await fetch(stored.url))[0] == 200

    clock.turn(1)  # the instant it expires

    assert (await fetch(stored.url))[0] == 404
    assert await storage.find(stored.key, clock()) is None
    assert await storage.sweep(clock()) == 1
    assert (await fetch(stored.url))[0] == 404


async def test_the_sweep_clears_an_object_folder_that_never_got_its_metadata(storage: LocalStorage) -> None:
    # What a crash between placing the file and writing its sidecar leaves.
    orphan = storage.root / ("A" * 22)
    orphan.mkdir()
    (orphan / "half.bin").write_bytes(b"x")

    assert await storage.sweep(datetime.now(UTC)) == 0  # might be a put in progress
    assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE + 1)) == 1
    assert not orphan.exists()


# -- replacing a keyed object -----------------------------------------------------

KEYED = keyed_object_id("salt/request/image#0")


async def test_a_replaced_objects_earlier_bytes_stay_with_whoever_linked_them(
    storage: LocalStorage, tmp_path: Path
) -> None:
    """An app's input hard-linked from the first run keeps its bytes: the new file is renamed over the old."""
    first = await storage.put_bytes(
        b"first run", NewObject(file_name="out.png", content_type="image/png", expires_in=None, object_id=KEYED)
    )
    linked = tmp_path / "input.png"
    os.link(storage.path_of(first), linked)

    second = await put(storage, tmp_path, b"second run", object_id=KEYED)

    assert linked.read_bytes() == b"first run"
    assert storage.path_of(second).read_bytes() == b"second run"
    assert storage.path_of(second).stat().st_mode & 0o777 == 0o444


async def test_a_replacement_under_another_name_leaves_only_the_new_file(storage: LocalStorage, tmp_path: Path) -> None:
    await put(storage, tmp_path, b"png bytes", object_id=KEYED, file_name="out.png")
    second = await put(
        storage, tmp_path, b"jpeg bytes", object_id=KEYED, file_name="out.jpg", content_type="image/jpeg"
    )

    assert [p.name for p in (storage.root / KEYED).iterdir()] == ["out.jpg"]
    assert await fetch(second.url) == (200, b"jpeg bytes", "image/jpeg")


async def test_a_replacement_that_fails_leaves_the_earlier_object_whole(
    storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await put(storage, tmp_path, b"first run", object_id=KEYED)

    fill_the_disk(monkeypatch)
    with pytest.raises(ResourceExhausted):
        await storage.put_bytes(
            b"second", NewObject(file_name="out.png", content_type="image/png", expires_in=None, object_id=KEYED)
        )
    monkeypatch.undo()

    assert await fetch(first.url) == (200, b"first run", "image/png")
    assert [p.name for p in (storage.root / KEYED).iterdir()] == ["out.png"]  # no staging file left


async def test_a_first_keyed_store_that_fails_leaves_no_folder(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_the_disk(monkeypatch)
    with pytest.raises(ResourceExhausted):
        await storage.put_bytes(
            b"x", NewObject(file_name="out.png", content_type="image/png", expires_in=None, object_id=KEYED)
        )

    assert object_folders(storage) == []


async def test_the_sweep_clears_a_replacements_staging_file_a_crash_left(storage: LocalStorage, tmp_path: Path) -> None:
    stored = await put(storage, tmp_path, b"kept", object_id=KEYED)
    staging = storage.root / KEYED / ".0123456789abcdef.ferry-tmp"
    staging.write_bytes(b"half")

    assert await storage.sweep(datetime.now(UTC)) == 0  # might be a replacement in progress
    await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE + 1))

    assert not staging.exists()
    assert await fetch(stored.url) == (200, b"kept", "image/png")


# -- multipart ------------------------------------------------------------------


async def test_a_completed_upload_cannot_be_completed_again(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    etag = await send_part(storage, tmp_path, upload_id, 1, b"x")
    await storage.complete_multipart(upload_id, [(1, etag)])

    with pytest.raises(NotFound):
        await storage.complete_multipart(upload_id, [(1, etag)])


@pytest.mark.parametrize("ended_by", ["abort", "sweep"])
async def test_a_part_sent_after_its_upload_ended_is_not_found(
    storage: LocalStorage, tmp_path: Path, ended_by: str
) -> None:
    # Every backend should answer so (S3 says NoSuchUpload), but moto's S3 server fails the part with a 500,
    # so the contract suite holds local storage alone to it.
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    await send_part(storage, tmp_path, upload_id, 1, b"x")
    if ended_by == "abort":
        await storage.abort_multipart(upload_id)
    else:
        assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE + 60)) == 1

    with pytest.raises(NotFound) as gone:
        await send_part(storage, tmp_path, upload_id, 2, b"late")
    assert gone.value.reason == "UNKNOWN_UPLOAD"
