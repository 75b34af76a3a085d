"""The stack trusts what it stored itself: `ferry serve` with default flags takes its own URLs as inputs.

Out of the box the network guard refuses loopback, where the embedded CDN
listens; uploads, app outputs and the README's `{"image_url": Path(...)}`
example still work, because the stack's own URLs resolve from its storage.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import boto3
import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

import ferry
from ferry.testing import StackProcess
from tests.conftest import AWS_TEST_CREDENTIALS

UPSCALER = "ferry.inference.apps.upscale:Upscaler"


def stored_path(data_dir: Path, url: str) -> Path:
    """Where local storage keeps the file behind one of its URLs: DATA_DIR/files/<id>/<name>."""
    _, object_id, name = urlsplit(url).path.rsplit("/", 2)
    return data_dir / "files" / object_id / unquote(name)


def png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_upload_downloads_by_its_url_as_a_hard_link_of_the_stored_file(start_ferry, tmp_path):
    stack = start_ferry()  # default flags: no --allow-private-networks
    with stack.client() as client:
        stored = client.upload_bytes(b"uploaded by the SDK", "text/plain", "note.txt")
        assert stored.url.startswith(stack.cdn_url)
        path = client.download_file(stored.url)
        again = client.download_file(stored.url, target_dir=str(tmp_path / "inputs"))  # the reference's example
    original = stored_path(tmp_path / "data0", stored.url)
    assert path.read_bytes() == again.read_bytes() == b"uploaded by the SDK"
    assert os.stat(path).st_ino == os.stat(original).st_ino == os.stat(again).st_ino, "linked, never copied"


def test_a_url_on_the_stacks_cdn_that_names_nothing_is_not_found(start_ferry):
    stack = start_ferry()
    with stack.client() as client:
        for path in ("/files/AAAAAAAAAAAAAAAAAAAAAA/none.txt", "/files/../../etc/passwd"):
            with pytest.raises(ferry.FerryError) as caught:
                client.download_file(stack.cdn_url + path)
            assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "OBJECT_NOT_FOUND")


def test_an_app_takes_the_stacks_own_uploads_and_outputs_as_inputs(tmp_path_factory, tmp_path):
    picture = tmp_path / "small.png"
    picture.write_bytes(png(6, 4))
    data = tmp_path_factory.mktemp("apps")
    with StackProcess(["--data-dir", str(data), "--app", UPSCALER]) as stack, stack.client() as client:
        from_path = client.run("upscaler", {"image_url": picture, "scale": 2})  # the SDK uploads the Path first
        uploaded = client.upload_file(picture)
        from_url = client.run("upscaler", {"image_url": uploaded.url, "scale": 2})
        chained = client.run("upscaler", {"image_url": from_url["image"]["url"], "scale": 2})  # output → input
    assert all(output["image"]["url"].startswith(stack.cdn_url) for output in (from_path, from_url, chained))
    assert (
        ferry.Image.model_validate(from_path["image"]).width,
        ferry.Image.model_validate(from_url["image"]).height,
    ) == (12, 8)
    assert (
        ferry.Image.model_validate(chained["image"]).width,
        ferry.Image.model_validate(chained["image"]).height,
    ) == (24, 16)


def test_a_downloader_apart_from_the_encoder_fetches_the_configured_cdn_over_http(start_ferry, tmp_path):
    encoder = start_ferry("encoder")
    trusting = start_ferry("downloader", "--public-url", encoder.cdn_url)
    default = start_ferry("downloader")
    with encoder.client() as client:
        stored = client.upload_bytes(b"from the encoder's CDN", "text/plain", "far.txt")
    with trusting.client() as client:
        path = client.download_file(stored.url)
    assert path.read_bytes() == b"from the encoder's CDN"
    assert os.stat(path).st_ino != os.stat(stored_path(tmp_path / "data0", stored.url)).st_ino, "over HTTP"
    with default.client() as client, pytest.raises(ferry.FerryError) as caught:
        client.download_file(stored.url)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "--allow-hosts" in caught.value.message and "--allow-private-networks" in caught.value.message


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"ferry-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=name)
    return name


def test_presigned_urls_of_the_stacks_bucket_are_read_with_its_own_client(start_ferry, s3_endpoint, bucket):
    storage = ("--storage", f"s3://{bucket}/out", "--s3-endpoint-url", s3_endpoint)
    stack = start_ferry(*storage, env=AWS_TEST_CREDENTIALS)  # moto listens on loopback: the guard would refuse it
    downloader = start_ferry("downloader", *storage, env=AWS_TEST_CREDENTIALS)  # apart, same configuration
    with stack.client() as client:
        stored = client.upload_bytes(b"in the bucket", "text/plain", "bucket.txt")
        assert "X-Amz-Signature=" in stored.url
        assert client.download_file(stored.url).read_bytes() == b"in the bucket"
    with downloader.client() as client:
        assert client.download_file(stored.url).read_bytes() == b"in the bucket"
