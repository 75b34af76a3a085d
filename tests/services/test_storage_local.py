"""Local storage: files land under DATA_DIR/files/<id>/<name>, served by the real embedded CDN.

Metadata sits in DATA_DIR/.ferry/storage, out of the CDN's reach; multipart
uploads obey S3's part rules so a client works the same on either backend.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from ferry.services.errors import InvalidArgument, NotFound, ResourceExhausted
from ferry.services.storage.base import MIN_PART_SIZE, StoredObject
from ferry.services.storage.local import ID_PATTERN, LocalStorage
from tests.services.storage_fixtures import served_local_storage

MAX_AGE = 3600.0


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    """Local storage under tmp_path/data, served by a real CDN on a free loopback port."""
    async with served_local_storage(tmp_path / "data" / "files", multipart_max_age_seconds=MAX_AGE) as local:
        yield local


def a_file(folder: Path, data: bytes, name: str = "upload.incoming") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


async def put(storage: LocalStorage, tmp_path: Path, data: bytes, **options: object) -> StoredObject:
    options = {"file_name": "out.png", "content_type": "image/png", "expires_in": None, **options}
    return await storage.put_file(
        a_file(tmp_path, data),
        sha256=hashlib.sha256(data).hexdigest(),
        **options,  # type: ignore[arg-type]
    )


async def fetch(url: str) -> tuple[int, bytes, str | None]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read(), response.headers.get("Content-Type")


def object_folders(storage: LocalStorage) -> list[Path]:
    return list(storage.root.iterdir())


async def test_a_stored_file_is_served_at_its_url(storage: LocalStorage, tmp_path: Path) -> None:
    stored = await put(storage, tmp_path, b"\x89PNG pixels", file_name="cat photo.png")

    assert stored.url.endswith(f"/files/{stored.key}/cat%20photo.png")
    assert (stored.file_name, stored.content_type, stored.size) == ("cat photo.png", "image/png", 11)
    assert (stored.sha256, stored.expires_at, stored.backend) == (
        hashlib.sha256(b"\x89PNG pixels").hexdigest(),
        None,
        "local",
    )
    assert await fetch(stored.url) == (200, b"\x89PNG pixels", "image/png")


async def test_bytes_in_memory_are_stored_and_hashed_by_the_storage(storage: LocalStorage, tmp_path: Path) -> None:
    stored = await storage.put_bytes(b"\xff\xd8 jpeg", file_name="out.jpg", content_type="image/jpeg", expires_in=60)

    assert (stored.size, stored.sha256) == (7, hashlib.sha256(b"\xff\xd8 jpeg").hexdigest())
    assert stored.expires_at is not None
    assert await fetch(stored.url) == (200, b"\xff\xd8 jpeg", "image/jpeg")
    data_dir = tmp_path / "data"
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file()) == sorted(
        [Path("files", stored.key, "out.jpg"), Path(".ferry", "storage", "objects", f"{stored.key}.json")]
    )  # the file and its sidecar, no temp file on the way


async def test_bytes_that_cannot_be_written_leave_no_object_behind(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ResourceExhausted) as full:
        await storage.put_bytes(b"pixels", file_name="out.png", content_type="image/png", expires_in=None)

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
        stored = await storage.put_bytes(b"frames", file_name="a.bin", content_type="application/octet-stream", expires_in=None)
    else:
        upload_id = await storage.create_multipart(file_name="a.bin", content_type="application/octet-stream", expires_in=None)
        etag = await send_part(storage, tmp_path, upload_id, 1, b"frames")
        stored = await storage.complete_multipart(upload_id, [(1, etag)])

    (path,) = (storage.root / stored.key).iterdir()
    assert path.stat().st_mode & 0o777 == 0o444


async def test_ids_are_128_random_bits_and_never_repeat(storage: LocalStorage, tmp_path: Path) -> None:
    keys = [(await put(storage, tmp_path, b"x")).key for _ in range(20)]

    assert all(ID_PATTERN.fullmatch(key) for key in keys)  # 22 base64url characters: 132 bits, of which 128 random
    assert len(set(keys)) == len(keys)


async def test_the_callers_file_is_left_for_the_caller_to_delete(storage: LocalStorage, tmp_path: Path) -> None:
    source = a_file(tmp_path, b"frames")
    await storage.put_file(source, file_name="a.mp4", content_type="video/mp4", sha256="0" * 64, expires_in=None)

    assert source.read_bytes() == b"frames"
    source.unlink()
    assert (storage.root / object_folders(storage)[0].name / "a.mp4").read_bytes() == b"frames"


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


@pytest.mark.parametrize("name", ["", ".", "..", "../escape.png", "a/b.png", "a\\b.png", "bell\x07.png", " padded.png"])
async def test_names_that_are_not_plain_safe_file_names_are_refused(
    storage: LocalStorage, tmp_path: Path, name: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await put(storage, tmp_path, b"x", file_name=name)
    assert refused.value.reason == "INVALID_FILE_NAME"
    assert object_folders(storage) == []


@pytest.mark.parametrize("expires_in", [0, -5])
async def test_a_lifetime_must_be_positive(storage: LocalStorage, tmp_path: Path, expires_in: int) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await put(storage, tmp_path, b"x", expires_in=expires_in)
    assert refused.value.reason == "INVALID_EXPIRY"


async def test_an_expiring_object_says_when(storage: LocalStorage, tmp_path: Path) -> None:
    before = datetime.now(UTC)
    stored = await put(storage, tmp_path, b"x", expires_in=3600)

    assert stored.expires_at is not None
    assert before + timedelta(seconds=3600) <= stored.expires_at <= datetime.now(UTC) + timedelta(seconds=3600)


async def test_the_sweep_deletes_expired_objects_file_and_metadata(storage: LocalStorage, tmp_path: Path) -> None:
    expiring = await put(storage, tmp_path, b"soon gone", expires_in=60)
    forever = await put(storage, tmp_path, b"kept")

    assert await storage.sweep(datetime.now(UTC)) == 0
    assert await storage.sweep(datetime.now(UTC) + timedelta(minutes=2)) == 1

    assert [p.name for p in object_folders(storage)] == [forever.key]
    assert not (storage.objects / f"{expiring.key}.json").exists()
    assert (await fetch(expiring.url))[0] == 404
    assert (await fetch(forever.url))[1] == b"kept"


async def test_an_expired_object_is_gone_before_the_sweep_runs(storage: LocalStorage, tmp_path: Path) -> None:
    stored = await put(storage, tmp_path, b"brief", expires_in=1)
    assert (await fetch(stored.url))[0] == 200

    await asyncio.sleep(1.1)

    assert (await fetch(stored.url))[0] == 404
    assert await storage.find(stored.key, datetime.now(UTC)) is None
    assert await storage.sweep(datetime.now(UTC)) == 1
    assert (await fetch(stored.url))[0] == 404


async def test_the_sweep_clears_an_object_folder_that_never_got_its_metadata(storage: LocalStorage) -> None:
    # What a crash between placing the file and writing its sidecar leaves.
    orphan = storage.root / ("A" * 22)
    orphan.mkdir()
    (orphan / "half.bin").write_bytes(b"x")

    assert await storage.sweep(datetime.now(UTC)) == 0  # might be a put in progress
    assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE + 1)) == 1
    assert not orphan.exists()


# -- multipart ------------------------------------------------------------------


def part_bytes(seed: int, size: int = MIN_PART_SIZE) -> bytes:
    return bytes([seed]) * size


async def send_part(storage: LocalStorage, tmp_path: Path, upload_id: str, number: int, data: bytes) -> str:
    return await storage.put_part(upload_id, number, a_file(tmp_path, data, f"part-{number}.incoming"))


async def test_parts_sent_out_of_order_and_resent_assemble_exactly(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(file_name="movie.mp4", content_type="video/mp4", expires_in=None)
    first, second, last = part_bytes(1), part_bytes(2), b"tail"

    etag_last = await send_part(storage, tmp_path, upload_id, 3, last)
    await send_part(storage, tmp_path, upload_id, 2, part_bytes(9))  # a bad first try…
    etag_second = await send_part(storage, tmp_path, upload_id, 2, second)  # …re-sent: the last one wins
    etag_first = await send_part(storage, tmp_path, upload_id, 1, first)
    stored = await storage.complete_multipart(upload_id, [(3, etag_last), (1, etag_first), (2, etag_second)])

    whole = first + second + last
    assert (stored.size, stored.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert (stored.file_name, stored.content_type) == ("movie.mp4", "video/mp4")
    assert await fetch(stored.url) == (200, whole, "video/mp4")
    assert list(storage.uploads.iterdir()) == []


async def test_the_etag_of_a_replaced_part_no_longer_completes(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    stale = await send_part(storage, tmp_path, upload_id, 1, b"old")
    await send_part(storage, tmp_path, upload_id, 1, b"new")

    with pytest.raises(InvalidArgument) as refused:
        await storage.complete_multipart(upload_id, [(1, stale)])
    assert refused.value.reason == "PART_MISMATCH"


async def test_every_part_but_the_last_needs_5_mib_as_on_s3(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    small = await send_part(storage, tmp_path, upload_id, 1, b"too small")
    last = await send_part(storage, tmp_path, upload_id, 2, b"end")

    with pytest.raises(InvalidArgument) as refused:
        await storage.complete_multipart(upload_id, [(1, small), (2, last)])
    assert refused.value.reason == "PART_TOO_SMALL"


async def test_a_multipart_lifetime_counts_from_completion(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=60
    )
    etag = await send_part(storage, tmp_path, upload_id, 1, b"only part")
    completing = datetime.now(UTC)
    stored = await storage.complete_multipart(upload_id, [(1, etag)])

    assert stored.expires_at is not None and stored.expires_at >= completing + timedelta(seconds=60)


async def test_abort_leaves_nothing_and_may_be_repeated(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    await send_part(storage, tmp_path, upload_id, 1, part_bytes(1))

    await storage.abort_multipart(upload_id)
    await storage.abort_multipart(upload_id)

    assert list(storage.uploads.iterdir()) == [] and object_folders(storage) == []
    with pytest.raises(NotFound) as gone:
        await send_part(storage, tmp_path, upload_id, 2, b"late")
    assert gone.value.reason == "UNKNOWN_UPLOAD"


async def test_a_completed_upload_cannot_be_completed_again(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    etag = await send_part(storage, tmp_path, upload_id, 1, b"x")
    await storage.complete_multipart(upload_id, [(1, etag)])

    with pytest.raises(NotFound):
        await storage.complete_multipart(upload_id, [(1, etag)])


@pytest.mark.parametrize("upload_id", ["", "nope", "../../objects", "A" * 22])
async def test_unknown_upload_ids_are_not_found(storage: LocalStorage, tmp_path: Path, upload_id: str) -> None:
    with pytest.raises(NotFound) as unknown:
        await send_part(storage, tmp_path, upload_id, 1, b"x")
    assert unknown.value.reason == "UNKNOWN_UPLOAD"


async def test_idle_uploads_are_swept(storage: LocalStorage, tmp_path: Path) -> None:
    upload_id = await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=None
    )
    await send_part(storage, tmp_path, upload_id, 1, b"x")

    assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE - 60)) == 0
    assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE + 1)) == 1
    assert list(storage.uploads.iterdir()) == []
    with pytest.raises(NotFound):
        await send_part(storage, tmp_path, upload_id, 2, b"late")
