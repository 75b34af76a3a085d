"""The toolkit types and `ferry upload` against a real stack: what users write in their handlers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

import ferry


@pytest.fixture
def client(ferry_serve):
    with ferry_serve.client() as client:
        yield client


def test_image_from_tensor_and_from_pil_round_trip(client):
    pixels = (np.indices((40, 60)).sum(axis=0) % 256).astype(np.uint8)
    image = ferry.Image.from_tensor(pixels, format="png", client=client)
    assert (image.width, image.height) == (60, 40)
    assert np.array_equal(np.asarray(image.to_pil()), pixels)
    again = ferry.Image.from_pil(image.to_pil(), format="png", client=client)
    assert np.array_equal(np.asarray(again.to_pil()), pixels)


def test_a_torch_tensor_becomes_an_image(client):
    torch = pytest.importorskip("torch")
    image = ferry.Image.from_tensor(torch.zeros(3, 16, 24), format="png", client=client)
    assert (image.width, image.height) == (24, 16)


def test_video_and_audio_from_tensors(client):
    frames = np.zeros((10, 32, 48, 3), np.uint8)
    video = ferry.Video.from_tensor(frames, fps=5, client=client)
    assert (video.frame_count, video.fps, video.width, video.height) == (10, 5, 48, 32)
    audio = ferry.Audio.from_tensor(np.zeros(8000, np.float32), sample_rate=8000, client=client)
    assert (audio.sample_rate, audio.channels, audio.sample_count) == (8000, 1, 8000)


def test_file_from_path_saves_back_identically(client, tmp_path):
    source = tmp_path / "report.json"
    source.write_text('{"ok": true}')
    stored = ferry.File.from_path(source, client=client, expires_in=600)
    assert stored.content_type == "application/json" and stored.expires_at is not None
    assert stored.save(tmp_path / "copy.json").read_text() == '{"ok": true}'


def test_upload_cli_prints_the_url(ferry_serve, tmp_path):
    source = tmp_path / "photo.png"
    PILImage.new("RGB", (8, 8), "red").save(source)
    result = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "upload", str(source), "--expires-in", "60", "--address", ferry_serve.grpc_address],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (url,) = result.stdout.split()
    assert url.endswith("/photo.png")
    assert ferry.File(url=url, content_type="image/png", file_name="photo.png", file_size=0).as_bytes() == source.read_bytes()


def test_upload_cli_reports_errors(ferry_serve, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ferry.cli", "upload", str(tmp_path / "missing.bin"), "--address", ferry_serve.grpc_address],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "no such file" in result.stderr


async def test_the_async_client_uploads_and_encodes(ferry_serve, tmp_path):
    source = tmp_path / "small.txt"
    source.write_text("async")
    async with ferry.AsyncClient(ferry_serve.grpc_address) as client:
        uploaded = await client.upload_file(source, expires_in=60)
        raw = await client.upload_bytes(b"raw", "text/plain", "raw.txt")
        (png,) = await client.encode_tensor(np.zeros((4, 6), np.uint8), "png")
    assert uploaded.content_type == "text/plain" and uploaded.HasField("expires_at")
    assert raw.file_size == 3 and (png.image.width, png.image.height) == (6, 4)
    assert ferry.File.from_proto(png).as_bytes().startswith(b"\x89PNG")
