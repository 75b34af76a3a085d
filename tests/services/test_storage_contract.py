"""What every Storage does (the contract `services/storage/base.py` states), run over each one a stack may write to.

The same cases run over local storage served by the real CDN, S3 (moto's
server over HTTP) and the chain a stack builds for `--storage s3://… local`
(S3 takes the writes, local waits behind it). A case looks at a backend only
through the contract and the URLs it hands out, plus what its operator would
list: the objects it holds and the multipart uploads still open. Lifetimes
count from a clock the test turns (`TurnedClock`), so nothing waits for an
object to expire. What only one backend does is specified in its own module.

One rule is left to local storage's module: a part sent after its upload was
aborted or swept is NOT_FOUND. S3 answers NoSuchUpload there, but moto's server
fails the request with a 500, so S3 cannot be held to it here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import boto3
import pytest
from yarl import URL

from ferry.errors import FerryError, InvalidArgument, NotFound
from ferry.services.storage.base import MIN_PART_SIZE, NewObject, Storage, keyed_object_id
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.local import LocalStorage
from ferry.services.storage.s3 import S3Storage
from tests.services.storage_fixtures import TurnedClock, a_file, put, send_part, served_local_storage

MAX_AGE = 3600.0  # how long a multipart upload may sit idle before the sweep aborts it
BACKENDS = ["local", "s3", "chain"]


@dataclass
class Subject:
    """A storage under the contract, and what its operator sees behind it."""

    storage: Storage
    backend: str  # what `StoredObject.backend` says of what it stores
    stored_keys: Callable[[], list[str]]  # every object it holds, whole or not, expired or not
    open_uploads: Callable[[], list[str]]  # multipart uploads it still keeps parts for


def local_keys(local: LocalStorage) -> list[str]:
    """Object folders and metadata sidecars alike: a half-deleted object still shows."""
    return sorted(
        {folder.name for folder in local.root.iterdir()} | {sidecar.stem for sidecar in local.objects.glob("*.json")}
    )


def local_uploads(local: LocalStorage) -> list[str]:
    return sorted(folder.name for folder in local.uploads.iterdir())


def s3_keys(s3: Any, bucket: str) -> list[str]:
    return sorted(entry["Key"] for entry in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def s3_uploads(s3: Any, bucket: str) -> list[str]:
    return sorted(upload["UploadId"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@asynccontextmanager
async def local_subject(tmp_path: Path, clock: TurnedClock) -> AsyncIterator[tuple[LocalStorage, Subject]]:
    async with served_local_storage(
        tmp_path / "data" / "files", multipart_max_age_seconds=MAX_AGE, clock=clock
    ) as local:
        yield local, Subject(local, "local", lambda: local_keys(local), lambda: local_uploads(local))


@asynccontextmanager
async def s3_subject(endpoint: str, tmp_path: Path, clock: TurnedClock) -> AsyncIterator[tuple[S3Storage, Subject]]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"ferry-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    storage = S3Storage(
        bucket,
        "outputs",
        endpoint_url=endpoint,
        region="us-east-1",
        multipart_max_age_seconds=MAX_AGE,
        holding_dir=tmp_path / "s3-parts",
        clock=clock,
    )
    try:
        yield storage, Subject(storage, storage.name, lambda: s3_keys(s3, bucket), lambda: s3_uploads(s3, bucket))
    finally:
        await storage.close()


@pytest.fixture
def clock() -> TurnedClock:
    return TurnedClock()


@pytest.fixture(params=BACKENDS)
async def subject(
    request: pytest.FixtureRequest, tmp_path: Path, clock: TurnedClock, aws_test_credentials: None
) -> AsyncIterator[Subject]:
    if request.param == "local":
        async with local_subject(tmp_path, clock) as (_, local):
            yield local
    elif request.param == "s3":
        async with s3_subject(request.getfixturevalue("s3_endpoint"), tmp_path, clock) as (_, s3):
            yield s3
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        async with s3_subject(endpoint, tmp_path, clock) as (_, s3), local_subject(tmp_path, clock) as (_, local):
            chain = StorageChain(
                (s3.storage, local.storage), attempts=3, backoff_seconds=0.001, max_backoff_seconds=0.01
            )
            yield Subject(
                chain,
                s3.backend,  # the first backend takes every write while it answers
                lambda: s3.stored_keys() + local.stored_keys(),
                lambda: s3.open_uploads() + local.open_uploads(),
            )


async def new_upload(storage: Storage, expires_in: int | None = None) -> str:
    return await storage.create_multipart(
        file_name="a.bin", content_type="application/octet-stream", expires_in=expires_in
    )


def part_bytes(seed: int, size: int = MIN_PART_SIZE) -> bytes:
    return bytes([seed]) * size


async def refusal(call: Awaitable[object], case: str) -> FerryError:
    """The error `call` is refused with; the test fails naming `case` if it is accepted instead.

    Refusals take milliseconds, so their cases loop inside one test per backend rather than one test
    each: every test builds its storages, ~0.3 s for an S3Storage's boto3 session.
    """
    try:
        await call
    except FerryError as error:
        return error
    pytest.fail(f"{case} was accepted")


async def fetch(url: str) -> tuple[int, bytes, str | None]:
    """GET `url` as a user's browser would; the URL is sent as issued (a presigned query signs its exact bytes)."""
    async with aiohttp.ClientSession() as session, session.get(URL(url, encoded=True)) as response:
        return response.status, await response.read(), response.headers.get("Content-Type")


# -- storing a file ---------------------------------------------------------------


async def test_a_stored_file_is_served_at_its_url_with_its_name_type_size_and_hash(
    subject: Subject, tmp_path: Path
) -> None:
    stored = await put(subject.storage, tmp_path, b"\x89PNG pixels", file_name="cat photo.png")

    assert (stored.file_name, stored.content_type, stored.size) == ("cat photo.png", "image/png", 11)
    assert (stored.sha256, stored.expires_at, stored.backend) == (
        hashlib.sha256(b"\x89PNG pixels").hexdigest(),
        None,
        subject.backend,
    )
    assert await fetch(stored.url) == (200, b"\x89PNG pixels", "image/png")


async def test_bytes_in_memory_are_stored_and_hashed_by_the_storage(subject: Subject, clock: TurnedClock) -> None:
    stored = await subject.storage.put_bytes(
        b"\xff\xd8 jpeg", NewObject(file_name="out.jpg", content_type="image/jpeg", expires_in=60)
    )

    assert (stored.size, stored.sha256) == (7, hashlib.sha256(b"\xff\xd8 jpeg").hexdigest())
    assert stored.expires_at == clock() + timedelta(seconds=60)
    assert await fetch(stored.url) == (200, b"\xff\xd8 jpeg", "image/jpeg")


async def test_the_callers_file_is_left_for_the_caller_to_delete(subject: Subject, tmp_path: Path) -> None:
    source = a_file(tmp_path, b"frames")
    stored = await subject.storage.put_file(
        source, NewObject(file_name="a.mp4", content_type="video/mp4", expires_in=None), "0" * 64
    )

    assert source.read_bytes() == b"frames"
    source.unlink()
    assert (await fetch(stored.url))[1] == b"frames"


UNSAFE_NAMES = ["", ".", "..", "../escape.png", "a/b.png", "a\\b.png", "bell\x07.png", " padded.png"]


async def test_names_that_are_not_plain_safe_file_names_are_refused(subject: Subject, tmp_path: Path) -> None:
    for name in UNSAFE_NAMES:
        refused = await refusal(put(subject.storage, tmp_path, b"x", file_name=name), f"the name {name!r}")
        assert (type(refused), refused.reason) == (InvalidArgument, "INVALID_FILE_NAME"), name
    assert subject.stored_keys() == []


# -- keyed object ids -------------------------------------------------------------


async def test_storing_again_under_a_keyed_id_replaces_the_object_at_the_same_url(
    subject: Subject, tmp_path: Path
) -> None:
    """How a request run twice (its replica died) leaves one object per output, holding the last run's bytes."""
    object_id = keyed_object_id("salt/request-1/image#0")
    first = await subject.storage.put_bytes(
        b"first run", NewObject(file_name="out.png", content_type="image/png", expires_in=None, object_id=object_id)
    )
    second = await put(subject.storage, tmp_path, b"second run", object_id=object_id)

    # Same place (a presigned URL's query carries its signing time, so only the path is compared).
    assert first.key == second.key and urlsplit(first.url).path == urlsplit(second.url).path
    assert (second.size, second.sha256) == (10, hashlib.sha256(b"second run").hexdigest())
    assert await fetch(second.url) == (200, b"second run", "image/png")
    assert len(subject.stored_keys()) == 1


async def test_different_keys_and_no_key_store_apart(subject: Subject, tmp_path: Path) -> None:
    keyed = [await put(subject.storage, tmp_path, b"x", object_id=keyed_object_id(f"k#{i}")) for i in range(2)]
    fresh = [await put(subject.storage, tmp_path, b"x") for _ in range(2)]

    assert len({stored.key for stored in keyed + fresh}) == 4
    assert len(subject.stored_keys()) == 4


BAD_OBJECT_IDS = ["", "..", "../../etc/passwd", "a/b", "x" * 21, "x" * 23, "has space" + "x" * 13]


async def test_object_ids_not_shaped_like_ids_are_refused(subject: Subject, tmp_path: Path) -> None:
    for object_id in BAD_OBJECT_IDS:
        refused = await refusal(put(subject.storage, tmp_path, b"x", object_id=object_id), f"the id {object_id!r}")
        assert (type(refused), refused.reason) == (InvalidArgument, "BAD_OBJECT_ID"), object_id
    assert subject.stored_keys() == []


# -- lifetimes --------------------------------------------------------------------


async def test_a_lifetime_must_be_positive(subject: Subject, tmp_path: Path) -> None:
    for expires_in in (0, -5):
        refused = await refusal(put(subject.storage, tmp_path, b"x", expires_in=expires_in), f"expires_in={expires_in}")
        assert (type(refused), refused.reason) == (InvalidArgument, "INVALID_EXPIRY"), expires_in


async def test_an_expiring_object_says_when(subject: Subject, tmp_path: Path, clock: TurnedClock) -> None:
    stored = await put(subject.storage, tmp_path, b"x", expires_in=3600)

    assert stored.expires_at == clock() + timedelta(seconds=3600)


async def test_a_multipart_lifetime_counts_from_completion(
    subject: Subject, tmp_path: Path, clock: TurnedClock
) -> None:
    upload_id = await new_upload(subject.storage, expires_in=60)
    etag = await send_part(subject.storage, tmp_path, upload_id, 1, b"only part")
    # S3 counts it from its own completion time (LastModified), in whole seconds.
    completing = clock().replace(microsecond=0)
    stored = await subject.storage.complete_multipart(upload_id, [(1, etag)])

    assert stored.expires_at is not None and stored.expires_at >= completing + timedelta(seconds=60)


async def test_the_sweep_deletes_expired_objects_and_keeps_the_rest(
    subject: Subject, tmp_path: Path, clock: TurnedClock
) -> None:
    expiring = await put(subject.storage, tmp_path, b"soon gone", expires_in=60)
    kept = await put(subject.storage, tmp_path, b"kept")
    upload_id = await new_upload(subject.storage, expires_in=60)
    etag = await send_part(subject.storage, tmp_path, upload_id, 1, b"whole")
    assembled = await subject.storage.complete_multipart(upload_id, [(1, etag)])

    assert await subject.storage.sweep(clock()) == 0
    assert await subject.storage.sweep(clock.turn(120)) == 2

    assert subject.stored_keys() == [kept.key]
    assert [(await fetch(gone.url))[0] for gone in (expiring, assembled)] == [404, 404]
    assert (await fetch(kept.url))[1] == b"kept"


# -- multipart uploads ------------------------------------------------------------


async def test_parts_sent_out_of_order_and_re_sent_assemble_exactly(subject: Subject, tmp_path: Path) -> None:
    storage = subject.storage
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
    assert subject.open_uploads() == []


async def test_the_etag_of_a_replaced_part_no_longer_completes(subject: Subject, tmp_path: Path) -> None:
    upload_id = await new_upload(subject.storage)
    stale = await send_part(subject.storage, tmp_path, upload_id, 1, b"old")
    await send_part(subject.storage, tmp_path, upload_id, 1, b"new")

    with pytest.raises(InvalidArgument) as refused:
        await subject.storage.complete_multipart(upload_id, [(1, stale)])
    assert refused.value.reason == "PART_MISMATCH"


async def test_every_part_but_the_last_needs_5_mib_as_on_s3(subject: Subject, tmp_path: Path) -> None:
    upload_id = await new_upload(subject.storage)
    small = await send_part(subject.storage, tmp_path, upload_id, 1, b"too small")
    last = await send_part(subject.storage, tmp_path, upload_id, 2, b"end")

    with pytest.raises(InvalidArgument) as refused:
        await subject.storage.complete_multipart(upload_id, [(1, small), (2, last)])
    assert refused.value.reason == "PART_TOO_SMALL"


async def test_abort_leaves_nothing_and_may_be_repeated(subject: Subject, tmp_path: Path) -> None:
    upload_id = await new_upload(subject.storage)
    await send_part(subject.storage, tmp_path, upload_id, 1, b"x" * 1024)

    await subject.storage.abort_multipart(upload_id)
    await subject.storage.abort_multipart(upload_id)

    assert subject.open_uploads() == [] and subject.stored_keys() == []


async def test_aborting_a_completed_upload_is_not_an_error_and_keeps_its_object(
    subject: Subject, tmp_path: Path
) -> None:
    upload_id = await new_upload(subject.storage)
    etag = await send_part(subject.storage, tmp_path, upload_id, 1, b"whole")
    stored = await subject.storage.complete_multipart(upload_id, [(1, etag)])

    await subject.storage.abort_multipart(upload_id)

    assert (await fetch(stored.url))[1] == b"whole"


# Ids no backend issued: malformed, path-like, an S3 token for a key outside the prefix ("W10" is `[]`,
# the last `["elsewhere/key","id"]`), chain ids naming no backend or nothing on the one they name.
NEVER_ISSUED = [
    "",
    "nope",
    "../../objects",
    "A" * 22,
    "not-base64!",
    "W10",
    "WyJlbHNld2hlcmUva2V5IiwiaWQiXQ",
    "0:",
    "2:abc",
    "-1:abc",
    "x:abc",
    "1:AAAAAAAAAAAAAAAAAAAAAA",
]


async def test_upload_ids_never_issued_are_not_found(subject: Subject, tmp_path: Path) -> None:
    for upload_id in NEVER_ISSUED:
        unknown = await refusal(send_part(subject.storage, tmp_path, upload_id, 1, b"x"), f"a part for {upload_id!r}")
        assert (type(unknown), unknown.reason) == (NotFound, "UNKNOWN_UPLOAD"), upload_id
        unknown = await refusal(
            subject.storage.complete_multipart(upload_id, [(1, "0" * 32)]), f"completing {upload_id!r}"
        )
        assert (type(unknown), unknown.reason) == (NotFound, "UNKNOWN_UPLOAD"), upload_id
        await subject.storage.abort_multipart(upload_id)  # not an error: there is nothing to abort


async def test_idle_uploads_are_swept(subject: Subject, tmp_path: Path, clock: TurnedClock) -> None:
    upload_id = await new_upload(subject.storage)
    await send_part(subject.storage, tmp_path, upload_id, 1, b"x")

    # A minute either side of the limit: the upload's activity is stamped by the stores' own clocks too.
    assert await subject.storage.sweep(clock() + timedelta(seconds=MAX_AGE - 60)) == 0
    assert await subject.storage.sweep(clock() + timedelta(seconds=MAX_AGE + 60)) == 1
    assert subject.open_uploads() == []
