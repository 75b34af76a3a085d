"""Storage through the whole stack: S3 (moto over HTTP), fallback, multipart, and SDK failover."""

from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from pathlib import Path

import boto3
import grpc
import pytest

import ferry
from ferry.sizes import MIB
from ferry.v1 import encoder_pb2
from tests.conftest import AWS_TEST_CREDENTIALS
from tests.harness import wait_for


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"ferry-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials()).create_bucket(Bucket=name)
    return name


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def big_file(folder: Path, size: int) -> Path:
    path = folder / "big.bin"
    with open(path, "wb") as f:
        for index in range(size // MIB):
            f.write(index.to_bytes(4, "little") * (MIB // 4))
        f.write(b"t" * (size % MIB))
    return path


def test_uploads_and_encodes_land_in_s3(start_ferry, s3_endpoint, bucket, tmp_path):
    stack = start_ferry("--storage", f"s3://{bucket}/out", "--s3-endpoint-url", s3_endpoint, env=AWS_TEST_CREDENTIALS)
    with stack.client() as client:
        stored = client.upload_bytes(b"to the bucket", "text/plain", "note.txt")
        assert fetch(stored.url) == b"to the bucket"
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials()).list_objects_v2(Bucket=bucket)[
            "Contents"
        ]
    ]
    assert len(keys) == 1 and keys[0].startswith("out/") and keys[0].endswith("/note.txt")


def test_a_down_s3_endpoint_falls_back_to_local(start_ferry, tmp_path, dead_address):
    dead = f"http://{dead_address}"
    stack = start_ferry(
        "--storage",
        "s3://nowhere/x",
        "--s3-endpoint-url",
        dead,
        "--storage",
        "local",
        "--storage-attempts",
        "2",
        env=AWS_TEST_CREDENTIALS,
    )
    with stack.client() as client:
        stored = client.upload_bytes(b"kept anyway", "text/plain", "fallback.txt")
    assert stored.url.startswith(stack.cdn_url) and fetch(stored.url) == b"kept anyway"
    assert "s3://nowhere/x" in stack.stop(), "the fallback was logged with the failing backend's name"


def test_with_no_fallback_a_down_s3_is_unavailable(start_ferry, dead_address):
    dead = f"http://{dead_address}"
    stack = start_ferry(
        "--storage", "s3://nowhere/x", "--s3-endpoint-url", dead, "--storage-attempts", "2", env=AWS_TEST_CREDENTIALS
    )
    with stack.client() as client:
        with pytest.raises(ferry.FerryError) as caught:
            client.upload_bytes(b"lost?", "text/plain", "x.txt")
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert client.health() == "SERVING"


@pytest.mark.timeout(300)
def test_files_over_100_mib_go_multipart_locally(start_ferry, tmp_path):
    stack = start_ferry()
    path = big_file(tmp_path, 101 * MIB + 123)
    seen = []
    with stack.client() as client:
        stored = client.upload_file(path, on_progress=lambda sent, total: seen.append((sent, total)))
    assert stored.file_size == path.stat().st_size
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    assert hashlib.sha256(fetch(stored.url)).hexdigest() == stored.sha256


@pytest.mark.timeout(300)
def test_files_over_100_mib_go_real_s3_multipart(start_ferry, s3_endpoint, bucket, tmp_path):
    stack = start_ferry("--storage", f"s3://{bucket}/big", "--s3-endpoint-url", s3_endpoint, env=AWS_TEST_CREDENTIALS)
    path = big_file(tmp_path, 101 * MIB)
    with stack.client() as client:
        stored = client.upload_file(path)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
    (obj,) = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert obj["Size"] == path.stat().st_size
    assert "-" in s3.head_object(Bucket=bucket, Key=obj["Key"])["ETag"], "assembled by S3 multipart"
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def uploads_dir(stack_data: Path) -> Path:
    return stack_data / ".ferry" / "storage" / "uploads"


def test_a_failing_multipart_upload_is_aborted_by_the_sdk(start_ferry, tmp_path):
    stack = start_ferry()
    path = big_file(tmp_path, 101 * MIB)

    def shrink(sent: int, total: int) -> None:
        if sent > 30 * MIB:
            os.truncate(path, 40 * MIB)  # the file changed under the upload: parts past it cannot be read

    with stack.client() as client, pytest.raises(OSError, match=r"ended .* bytes early"):  # why, not a cancelled call
        client.upload_file(path, on_progress=shrink)
    assert list(uploads_dir(tmp_path / "data0").iterdir()) == [], "AbortUpload removed every part"
    assert list((tmp_path / "data0" / "files").rglob("*.bin")) == []


def test_a_multipart_upload_whose_client_vanished_is_swept(start_ferry, tmp_path):
    stack = start_ferry("--multipart-max-age-seconds", "1", "--sweep-interval-seconds", "0.2")
    with stack.client() as client:
        upload_id = client.encoder.CreateUpload(encoder_pb2.CreateUploadRequest(file_name="gone.bin")).upload_id
        part = [
            encoder_pb2.UploadPartRequest(header=encoder_pb2.UploadPartHeader(upload_id=upload_id, part_number=1)),
            encoder_pb2.UploadPartRequest(chunk=os.urandom(6 * MIB)),
        ]
        etag = client.encoder.UploadPart(iter(part)).etag
        # ...and the client never completes nor aborts.
        wait_for(lambda: not any(uploads_dir(tmp_path / "data0").iterdir()), "the idle upload to be swept")
        with pytest.raises(grpc.RpcError) as caught:
            client.encoder.CompleteUpload(
                encoder_pb2.CompleteUploadRequest(
                    upload_id=upload_id, parts=[encoder_pb2.CompletedPart(part_number=1, etag=etag)]
                )
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_sdk_fails_over_across_encoder_addresses(start_ferry, dead_address):
    stack = start_ferry()
    with ferry.Client(stack.grpc_address, encoder_addresses=[dead_address, stack.grpc_address]) as client:
        stored = client.upload_bytes(b"via the live one", "text/plain", "failover.txt")
    assert fetch(stored.url) == b"via the live one"


async def test_the_async_sdk_fails_over_across_encoder_addresses(start_ferry, dead_address):
    stack = start_ferry()
    async with ferry.AsyncClient(stack.grpc_address, encoder_addresses=[dead_address, stack.grpc_address]) as client:
        stored = await client.upload_bytes(b"via the live one", "text/plain", "failover.txt")
    assert fetch(stored.url) == b"via the live one"


def rejection(call) -> ferry.FerryError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return ferry.FerryError.from_rpc_error(caught.value)


def test_streams_that_do_not_open_with_their_header_are_refused(ferry_serve):
    with ferry_serve.client() as client:
        for call in (
            lambda: client.encoder.Encode(iter([encoder_pb2.EncodeRequest(chunk=b"\0" * 12)])),
            lambda: client.encoder.Upload(iter([])),
            lambda: client.encoder.UploadPart(iter([encoder_pb2.UploadPartRequest(chunk=b"part")])),
        ):
            error = rejection(call)
            assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_HEADER")
        assert client.health() == "SERVING"


@pytest.mark.parametrize("number", [0, 10_001])
def test_part_numbers_outside_s3s_range_are_refused_before_any_byte_is_kept(ferry_serve, tmp_path, number):
    with ferry_serve.client() as client:
        upload_id = client.encoder.CreateUpload(encoder_pb2.CreateUploadRequest(file_name="a.bin")).upload_id
        part = [
            encoder_pb2.UploadPartRequest(header=encoder_pb2.UploadPartHeader(upload_id=upload_id, part_number=number)),
            encoder_pb2.UploadPartRequest(chunk=b"bytes"),
        ]
        error = rejection(lambda: client.encoder.UploadPart(iter(part)))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_PART_NUMBER")
    assert not any((tmp_path / "data0" / ".ferry" / "incoming").glob("*"))
    assert list(uploads_dir(tmp_path / "data0").rglob("*.part")) == []
