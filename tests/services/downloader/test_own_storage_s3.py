"""URLs of the S3 bucket the stack writes to are read with the storage's own client, never through the guard.

moto's S3 server listens on loopback, which the default guard refuses: a URL
of the bucket can only succeed by being read with the storage's client. Only
URLs this storage issued count: presigned ones its own credentials signed
(checked, not assumed), or keys under its public base URL, in its prefix and
key layout. Anything else about the bucket goes to the network, as before.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from botocore.config import Config

import ferry
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader
from ferry.services.downloader.own_storage import OwnStorage
from ferry.services.storage.base import NewObject
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.s3 import S3Storage
from tests.conftest import AWS_TEST_CREDENTIALS
from tests.services.downloader.helpers import events, leftovers

CONFIG = DownloaderConfig(retries=0)


@pytest.fixture(scope="module", autouse=True)
def credentials():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_TEST_CREDENTIALS.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="module")
def s3(s3_endpoint, credentials) -> Any:
    """A plain boto3 client with the stack's credentials, presigning as the storage does (SigV4, path-style)."""
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", config=config)


def new_bucket(s3) -> str:
    name = f"ferry-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def signed(s3, s3_endpoint, background_loop):
    """The stack's bucket with presigned URLs, as `--storage s3://BUCKET/out` makes it."""
    storage = S3Storage(new_bucket(s3), "out", endpoint_url=s3_endpoint, region="us-east-1")
    yield storage
    background_loop.run(storage.close())


@pytest.fixture(scope="module")
def public(s3, s3_endpoint, background_loop):
    """A bucket served publicly, as `--s3-public-url` makes it: URLs are the base plus the key."""
    bucket = new_bucket(s3)
    storage = S3Storage(
        bucket, "pub", endpoint_url=s3_endpoint, region="us-east-1", public_url_base=f"{s3_endpoint}/{bucket}"
    )
    yield storage
    background_loop.run(storage.close())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def downloader(data_dir, signed, public, background_loop):
    downloader = Downloader(CONFIG, data_dir, own_storage=OwnStorage.of(StorageChain([signed, public])))
    yield downloader
    background_loop.run(downloader.close())


def store(storage: S3Storage, background_loop, data: bytes, name: str = "clip.mp4", expires_in: int | None = None):
    return background_loop.run(
        storage.put_bytes(data, NewObject(file_name=name, content_type="video/mp4", expires_in=expires_in))
    )


def refusal(stub, **fields) -> ferry.FerryError:
    with pytest.raises(grpc.RpcError) as caught:
        events(stub, **fields)
    return ferry.FerryError.from_rpc_error(caught.value)


def wait_past(moment: datetime) -> None:
    while datetime.now(UTC) <= moment:
        time.sleep(0.05)


# -- the stack's own objects ------------------------------------------------------------------


def test_a_presigned_url_the_storage_issued_is_read_with_its_client(grpc_stub, signed, background_loop):
    stored = store(signed, background_loop, b"frames" * 5000)
    assert "X-Amz-Signature=" in stored.url
    responses = events(grpc_stub, url=stored.url, target_dir="signed")
    done = responses[-1].completed
    assert responses[0].started.total_bytes == 30000
    assert (Path(done.path).name, done.content_type, done.cache_hit) == ("clip.mp4", "video/mp4", False)
    assert Path(done.path).read_bytes() == b"frames" * 5000
    assert events(grpc_stub, url=stored.url, target_dir="signed")[-1].completed.cache_hit


def test_a_url_under_the_buckets_public_base_is_read_with_its_client(grpc_stub, public, background_loop):
    stored = store(public, background_loop, b"public frames", "public clip.mp4")
    assert "?" not in stored.url
    done = events(grpc_stub, url=stored.url, target_dir="public")[-1].completed
    assert Path(done.path).read_bytes() == b"public frames" and Path(done.path).name == "public clip.mp4"


def test_filesize_limit_holds_for_bucket_objects(grpc_stub, signed, background_loop, data_dir):
    stored = store(signed, background_loop, b"y" * 5000)
    error = refusal(grpc_stub, url=stored.url, target_dir="limited", filesize_limit_bytes=4999)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "FILE_TOO_LARGE")
    assert not (data_dir / "limited" / "clip.mp4").exists() and leftovers(data_dir) == []


# -- URLs of S3 the storage did not issue, or that name nothing -----------------------------------


def test_a_presigned_url_for_another_bucket_meets_the_guard(grpc_stub, s3):
    other = new_bucket(s3)
    s3.put_object(Bucket=other, Key="out/AAAAAAAAAAAAAAAAAAAAAA/clip.mp4", Body=b"not ours")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": other, "Key": "out/AAAAAAAAAAAAAAAAAAAAAA/clip.mp4"}
    )
    error = refusal(grpc_stub, url=url)
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")


@pytest.mark.parametrize(
    "key", ["secrets/AAAAAAAAAAAAAAAAAAAAAA/key.pem", "out/not-an-object-id/clip.mp4", "out/clip.mp4"]
)
def test_a_url_of_the_bucket_outside_the_storages_prefix_and_layout_meets_the_guard(grpc_stub, s3, signed, key):
    s3.put_object(Bucket=signed.bucket, Key=key, Body=b"someone else's")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": signed.bucket, "Key": key})  # same credentials
    error = refusal(grpc_stub, url=url)
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url[:-4] + ("0000" if not url.endswith("0000") else "1111"),
        lambda url: url.replace("X-Amz-Expires=", "X-Amz-Expires=9"),
        lambda url: url.split("&X-Amz-Signature=")[0],
    ],
    ids=["signature", "expiry", "unsigned"],
)
def test_a_presigned_url_not_signed_as_issued_meets_the_guard(grpc_stub, signed, background_loop, tamper):
    stored = store(signed, background_loop, b"tampered")
    error = refusal(grpc_stub, url=tamper(stored.url))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")


def test_an_expired_presigned_url_is_refused_as_s3_would(grpc_stub, signed, background_loop):
    stored = store(signed, background_loop, b"brief", expires_in=1)  # its URL lives as long as the object
    wait_past(stored.expires_at)
    error = refusal(grpc_stub, url=stored.url)
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "URL_EXPIRED")


def test_an_expired_object_is_not_found_even_before_the_sweep(grpc_stub, public, s3, background_loop):
    stored = store(public, background_loop, b"brief", expires_in=1)
    wait_past(stored.expires_at)
    assert s3.head_object(Bucket=public.bucket, Key=stored.key), "not swept yet"
    error = refusal(grpc_stub, url=stored.url)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")


def test_a_deleted_object_is_not_found(grpc_stub, signed, s3, background_loop):
    stored = store(signed, background_loop, b"deleted")
    s3.delete_object(Bucket=signed.bucket, Key=stored.key)
    error = refusal(grpc_stub, url=stored.url)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")
