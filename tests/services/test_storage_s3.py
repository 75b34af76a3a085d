"""S3 storage against a real HTTP S3 endpoint (moto's server on loopback): what is S3's own.

Objects with their metadata, presigned and public URLs, S3's failures, real
multipart uploads hashed as their parts arrive, and what the sweep must leave
alone. What every backend does is specified once in test_storage_contract.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
import urllib.request
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import pytest

from ferry.errors import InvalidArgument, Unavailable
from ferry.services.config import StorageConfig
from ferry.services.storage.assembly import build_storage
from ferry.services.storage.base import MIN_PART_SIZE, NewObject, TransientStorageError
from ferry.services.storage.s3 import SINGLE_PUT_BYTES, S3Storage
from tests.services.storage_fixtures import a_file, put, send_part

pytestmark = pytest.mark.usefixtures("aws_test_credentials")  # every test here talks to moto through boto3

MAX_AGE = 3600.0


@pytest.fixture
def endpoint(s3_endpoint: str) -> str:
    return s3_endpoint


@pytest.fixture
def s3(endpoint: str) -> Any:
    """A plain boto3 client, to look at the bucket the way anyone else would."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"ferry-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def storage_for(endpoint: str, bucket: str, **options: Any) -> S3Storage:
    return S3Storage(
        bucket, "outputs", endpoint_url=endpoint, region="us-east-1", multipart_max_age_seconds=MAX_AGE, **options
    )


@pytest.fixture
def holding(tmp_path: Path) -> Path:
    """Where the storage keeps parts that arrive ahead of their turn (DATA_DIR/.ferry/s3-parts when launched)."""
    return tmp_path / "s3-parts"


@pytest.fixture
async def storage(endpoint: str, bucket: str, holding: Path) -> Any:
    s3_storage = storage_for(endpoint, bucket, holding_dir=holding)
    yield s3_storage
    await s3_storage.close()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


async def test_a_stored_file_is_an_object_with_its_type_and_metadata(
    storage: S3Storage, s3: Any, bucket: str, tmp_path: Path
) -> None:
    stored = await put(storage, tmp_path, b"pixels", file_name="cat.png", expires_in=600)

    prefix, object_id, name = stored.key.split("/")
    assert (prefix, len(object_id), name) == ("outputs", 22, "cat.png")
    assert (stored.backend, stored.size, stored.file_name) == (f"s3://{bucket}/outputs", 6, "cat.png")
    head = s3.head_object(Bucket=bucket, Key=stored.key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {
        "ferry-sha256": hashlib.sha256(b"pixels").hexdigest(),
        "ferry-expires-at": stored.expires_at.isoformat(),
    }


@pytest.mark.parametrize("size", [6, SINGLE_PUT_BYTES + 1], ids=["one-put", "multipart"])
async def test_bytes_in_memory_become_an_object_hashed_by_the_storage(
    storage: S3Storage, s3: Any, bucket: str, size: int
) -> None:
    data = (b"pixels" * (size // 6 + 1))[:size]
    stored = await storage.put_bytes(data, NewObject(file_name="out.wav", content_type="audio/wav", expires_in=600))

    assert (stored.size, stored.sha256) == (size, hashlib.sha256(data).hexdigest())
    assert get(stored.url) == data
    head = s3.head_object(Bucket=bucket, Key=stored.key)
    assert head["ContentType"] == "audio/wav"
    assert head["Metadata"] == {"ferry-sha256": stored.sha256, "ferry-expires-at": stored.expires_at.isoformat()}


async def test_the_url_is_presigned_for_the_objects_lifetime(storage: S3Storage, tmp_path: Path) -> None:
    stored = await put(storage, tmp_path, b"frames", expires_in=600)

    assert get(stored.url) == b"frames"
    assert 590 <= int(parse_qs(urlsplit(stored.url).query)["X-Amz-Expires"][0]) <= 600


async def test_a_presigned_url_never_outlives_the_presign_cap(endpoint: str, bucket: str, tmp_path: Path) -> None:
    storage = storage_for(endpoint, bucket, presign_seconds=3600)
    stored = await put(storage, tmp_path, b"frames", expires_in=None)

    assert parse_qs(urlsplit(stored.url).query)["X-Amz-Expires"] == ["3600"]


async def test_with_a_public_base_url_the_url_is_base_and_key(
    endpoint: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    storage = storage_for(endpoint, bucket, public_url_base=f"{endpoint}/{bucket}/")
    stored = await put(storage, tmp_path, b"public bytes", file_name="a b.png")

    assert stored.url == f"{endpoint}/{bucket}/{quote(stored.key)}"
    assert "X-Amz" not in stored.url
    s3.put_object_acl(
        Bucket=bucket, Key=stored.key, ACL="public-read"
    )  # what makes a bucket public is its owner's business
    assert get(stored.url) == b"public bytes"


async def test_a_missing_bucket_is_unavailable_and_says_so(endpoint: str, tmp_path: Path) -> None:
    storage = storage_for(endpoint, "no-such-bucket-here")
    with pytest.raises(Unavailable) as down:
        await put(storage, tmp_path, b"x")
    assert down.value.reason == "STORAGE_BUCKET_MISSING"
    assert "no-such-bucket-here" in down.value.message


async def test_an_unreachable_endpoint_is_transient(tmp_path: Path, dead_address: str) -> None:
    storage = S3Storage("bucket", "outputs", endpoint_url=f"http://{dead_address}", region="us-east-1")

    with pytest.raises(TransientStorageError):
        await put(storage, tmp_path, b"x")
    with pytest.raises(TransientStorageError):
        await storage.create_multipart(file_name="a.bin", content_type="application/octet-stream", expires_in=None)


# -- multipart: real S3 multipart uploads ------------------------------------------


@pytest.fixture
async def upload_id(storage: S3Storage) -> str:
    """A multipart upload begun on `storage`, no part sent yet."""
    return await storage.create_multipart(file_name="a.bin", content_type="application/octet-stream", expires_in=None)


async def test_a_completion_retried_after_it_got_through_answers_the_same_object(
    storage: S3Storage, upload_id: str, tmp_path: Path
) -> None:
    etag = await send_part(storage, tmp_path, upload_id, 1, b"whole")

    first = await storage.complete_multipart(upload_id, [(1, etag)])
    again = await storage.complete_multipart(upload_id, [(1, etag)])

    assert (again.key, again.size, again.sha256) == (first.key, 5, hashlib.sha256(b"whole").hexdigest())


# -- multipart: the whole's sha256, hashed as the parts arrive ---------------------------


def count_object_reads(storage: S3Storage) -> list[str]:
    """The keys `storage` GETs from now on: reading the whole back is what hashing on arrival saves."""
    reads: list[str] = []
    storage._client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: reads.append(params["url_path"].rsplit("/", 1)[-1])
    )
    return reads


def held_files(holding: Path) -> list[Path]:
    return sorted(path for path in holding.rglob("*") if path.is_file()) if holding.exists() else []


@pytest.fixture
def parts() -> list[bytes]:
    """Three parts of an upload: two of S3's smallest size and a short last one."""
    return [b"\x01" * MIN_PART_SIZE, bytes(range(256)) * (MIN_PART_SIZE // 256), b"the last part"]


@pytest.fixture
def reads(storage: S3Storage) -> list[str]:
    return count_object_reads(storage)


async def test_parts_sent_out_of_order_are_hashed_on_arrival_without_reading_the_whole_back(
    storage: S3Storage, upload_id: str, parts: list[bytes], reads: list[str], holding: Path, tmp_path: Path
) -> None:
    etags = {3: await send_part(storage, tmp_path, upload_id, 3, parts[2])}
    assert len(held_files(holding)) == 1, "part 3 waits in the holding folder for parts 1 and 2"
    etags[1] = await send_part(storage, tmp_path, upload_id, 1, parts[0])
    etags[2] = await send_part(storage, tmp_path, upload_id, 2, parts[1])
    stored = await storage.complete_multipart(upload_id, sorted(etags.items()))

    whole = b"".join(parts)
    assert (stored.size, stored.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert reads == [], "the whole was not read back"
    assert get(stored.url) == whole
    assert held_files(holding) == []


async def test_a_part_re_sent_after_it_was_hashed_falls_back_to_reading_the_whole(
    storage: S3Storage, upload_id: str, parts: list[bytes], reads: list[str], holding: Path, tmp_path: Path
) -> None:
    await send_part(storage, tmp_path, upload_id, 1, b"\x09" * MIN_PART_SIZE)
    etag_2 = await send_part(storage, tmp_path, upload_id, 2, parts[1])
    etag_1 = await send_part(storage, tmp_path, upload_id, 1, parts[0])  # S3 keeps this one
    etag_3 = await send_part(storage, tmp_path, upload_id, 3, parts[2])
    stored = await storage.complete_multipart(upload_id, [(1, etag_1), (2, etag_2), (3, etag_3)])

    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert len(reads) == 1, "the digest was spoiled, so the whole was read back once"
    assert held_files(holding) == []


async def test_a_completion_of_fewer_parts_than_were_hashed_reads_the_whole(
    storage: S3Storage, upload_id: str, parts: list[bytes], reads: list[str], tmp_path: Path
) -> None:
    etags = [await send_part(storage, tmp_path, upload_id, number, data) for number, data in enumerate(parts, 1)]

    stored = await storage.complete_multipart(upload_id, [(1, etags[0]), (2, etags[1])])

    assert stored.sha256 == hashlib.sha256(parts[0] + parts[1]).hexdigest()
    assert len(reads) == 1


async def test_an_upload_whose_parts_this_storage_never_saw_is_hashed_by_reading_it_back(
    storage: S3Storage, upload_id: str, parts: list[bytes], endpoint: str, bucket: str, tmp_path: Path
) -> None:
    etags = [await send_part(storage, tmp_path, upload_id, number, data) for number, data in (enumerate(parts, 1))]
    other = storage_for(endpoint, bucket, holding_dir=tmp_path / "other-s3-parts")  # another replica, or a restart
    reads = count_object_reads(other)
    try:
        stored = await other.complete_multipart(upload_id, list(enumerate(etags, 1)))
    finally:
        await other.close()

    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert len(reads) == 1


async def test_a_part_re_sent_through_another_replica_is_caught_by_its_etag(
    storage: S3Storage,
    upload_id: str,
    parts: list[bytes],
    reads: list[str],
    endpoint: str,
    bucket: str,
    tmp_path: Path,
) -> None:
    etag_1 = await send_part(storage, tmp_path, upload_id, 1, parts[0])
    await send_part(storage, tmp_path, upload_id, 2, b"\x09" * MIN_PART_SIZE)
    etag_3 = await send_part(storage, tmp_path, upload_id, 3, parts[2])
    other = storage_for(endpoint, bucket)
    try:
        etag_2 = await send_part(other, tmp_path, upload_id, 2, parts[1])  # this replica's digest never sees it
    finally:
        await other.close()

    stored = await storage.complete_multipart(upload_id, [(1, etag_1), (2, etag_2), (3, etag_3)])

    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert len(reads) == 1


async def test_abort_leaves_no_held_parts(storage: S3Storage, upload_id: str, holding: Path, tmp_path: Path) -> None:
    await send_part(storage, tmp_path, upload_id, 2, b"x" * 1024)
    await send_part(storage, tmp_path, upload_id, 3, b"y" * 1024)
    assert len(held_files(holding)) == 2

    await storage.abort_multipart(upload_id)

    assert held_files(holding) == []
    assert list(holding.iterdir()) == [], "nor their folder"


async def test_a_failed_completion_keeps_the_digest_for_the_next_try(
    storage: S3Storage, upload_id: str, parts: list[bytes], reads: list[str], holding: Path, tmp_path: Path
) -> None:
    etags = {2: await send_part(storage, tmp_path, upload_id, 2, parts[1])}
    etags[1] = await send_part(storage, tmp_path, upload_id, 1, parts[0])
    with pytest.raises(InvalidArgument):
        await storage.complete_multipart(upload_id, [(1, etags[1]), (2, etags[1])])  # a wrong etag
    etags[3] = await send_part(storage, tmp_path, upload_id, 3, parts[2])

    stored = await storage.complete_multipart(upload_id, sorted(etags.items()))

    assert stored.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert reads == []
    assert held_files(holding) == []


async def test_the_sweep_of_an_idle_upload_frees_its_held_parts(
    storage: S3Storage, upload_id: str, s3: Any, bucket: str, holding: Path, tmp_path: Path
) -> None:
    await send_part(storage, tmp_path, upload_id, 2, b"x" * 1024)

    assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE - 60)) == 0
    assert len(held_files(holding)) == 1
    assert await storage.sweep(datetime.now(UTC) + timedelta(seconds=MAX_AGE + 1)) == 1
    assert held_files(holding) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_the_sweep_deletes_held_parts_a_dead_process_left_behind(
    storage: S3Storage, upload_id: str, holding: Path, tmp_path: Path
) -> None:
    def left_behind(folder: str, age_seconds: float) -> Path:
        held = holding / folder / "2.0123456789abcdef.part"
        held.parent.mkdir(parents=True)
        held.write_bytes(b"held by a process that died")
        then = time.time() - age_seconds
        for path in (held, held.parent):
            os.utime(path, (then, then))
        return held

    old, recent = left_behind("a" * 32, MAX_AGE + 60), left_behind("b" * 32, MAX_AGE - 60)
    await send_part(storage, tmp_path, upload_id, 2, b"x" * 1024)  # a live upload's

    assert await storage.sweep(datetime.now(UTC)) == 0

    assert not old.parent.exists(), "held longer than an upload may idle: nobody waits for it"
    assert recent.exists()
    assert len(held_files(holding)) == 2, "the recent leftover and the live upload's part"
    await storage.abort_multipart(upload_id)


async def test_a_launched_s3_storage_holds_parts_under_the_data_dir(endpoint: str, bucket: str, tmp_path: Path) -> None:
    config = StorageConfig(storage=(f"s3://{bucket}/outputs",), s3_endpoint_url=endpoint, s3_region="us-east-1")
    chain, _ = build_storage(config, tmp_path, lambda: "unused")
    try:
        upload_id = await chain.create_multipart(
            file_name="a.bin", content_type="application/octet-stream", expires_in=None
        )
        await chain.put_part(upload_id, 2, a_file(tmp_path, b"early", "part-2.incoming"))
        assert len(held_files(tmp_path / ".ferry" / "s3-parts")) == 1
        await chain.abort_multipart(upload_id)
        assert held_files(tmp_path / ".ferry" / "s3-parts") == []
    finally:
        await chain.close()


# -- sweep ----------------------------------------------------------------------


async def test_the_sweep_leaves_other_prefixes_alone(storage: S3Storage, s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket, Key="elsewhere/x", Body=b"x", Metadata={"ferry-expires-at": "2000-01-01T00:00:00+00:00"}
    )

    assert await storage.sweep(datetime.now(UTC)) == 0
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


async def test_a_fresh_upload_survives_a_sweep_even_when_the_store_misreports_its_start(
    storage: S3Storage, s3: Any, bucket: str, tmp_path: Path
) -> None:
    # moto reports every upload as initiated in 2010; the sweep must still see it as fresh.
    upload_id = await storage.create_multipart(
        file_name="fresh.bin", content_type="application/octet-stream", expires_in=None
    )
    assert await storage.sweep(datetime.now(UTC)) == 0
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    await storage.abort_multipart(upload_id)


async def test_every_part_carries_a_crc32_that_s3_checks_and_the_whole_keeps(
    storage: S3Storage, upload_id: str, parts: list[bytes], s3: Any, bucket: str, tmp_path: Path
) -> None:
    etags = [
        (number, await send_part(storage, tmp_path, upload_id, number, data)) for number, data in enumerate(parts, 1)
    ]
    for (_, token), data in zip(etags, parts, strict=True):
        # S3 answers with the checksum it verified; it rides to completion inside the opaque etag.
        assert token.endswith("|" + base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode())

    stored = await storage.complete_multipart(upload_id, etags)
    head = s3.head_object(Bucket=bucket, Key=stored.key, ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32"), "the completed object keeps its parts' checksums"
    assert get(stored.url) == b"".join(parts)
