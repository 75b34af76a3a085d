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
        [
            sys.executable,
            "-m",
            "ferry.cli",
            "upload",
            str(source),
            "--expires-in",
            "60",
            "--address",
            ferry_serve.grpc_address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (url,) = result.stdout.split()
    assert url.endswith("/photo.png")
    assert (
        ferry.File(url=url, content_type="image/png", file_name="photo.png", file_size=0).as_bytes()
        == source.read_bytes()
    )


def test_upload_cli_reports_errors(ferry_serve, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry.cli",
            "upload",
            str(tmp_path / "missing.bin"),
            "--address",
            ferry_serve.grpc_address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
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


def write_mp4(path, frames: int = 12, size: tuple[int, int] = (32, 24), fps: int = 6, with_audio: bool = False):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if with_audio:
            container.add_stream("aac", rate=16000)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), index * 10, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_wav(path, seconds: float = 1.5, rate: int = 16000, channels: int = 2):
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(int(seconds * rate) * channels * 2))
    return path


def test_video_from_path_reads_its_size_rate_and_length_from_the_file(client, tmp_path):
    video = ferry.Video.from_path(write_mp4(tmp_path / "output.mp4"), client=client)
    assert (video.width, video.height, video.fps, video.frame_count) == (32, 24, 6.0, 12)
    assert video.duration_seconds == pytest.approx(2.0, abs=0.2) and video.content_type == "video/mp4"
    assert not video.has_audio


def test_audio_from_path_of_a_wav_is_audio_wav_with_its_rate_and_length(client, tmp_path):
    audio = ferry.Audio.from_path(write_wav(tmp_path / "output.wav"), client=client)
    assert audio.content_type == "audio/wav"
    assert (audio.sample_rate, audio.channels, audio.sample_count) == (16000, 2, 24000)
    assert audio.duration_seconds == pytest.approx(1.5)


def test_audio_from_bytes_as_the_reference_writes_it(client, tmp_path):
    raw_bytes = write_wav(tmp_path / "clip.wav", seconds=0.5, channels=1).read_bytes()
    audio = ferry.Audio.from_bytes(raw_bytes, content_type="audio/wav", file_name="output.wav", client=client)
    assert (audio.file_name, audio.sample_rate, audio.channels) == ("output.wav", 16000, 1)


def test_a_file_that_is_not_media_is_uploaded_with_its_figures_unknown(client, tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"not a video at all")
    video = ferry.Video.from_path(path, client=client)
    assert (video.width, video.frame_count, video.file_size) == (0, 0, 18)


def test_save_writes_with_the_umasks_usual_mode(client, tmp_path):
    import os

    stored = ferry.File.from_bytes(b"hello", "text/plain", "hello.txt", client=client)
    previous = os.umask(0o022)
    try:
        saved = stored.save(tmp_path / "hello.txt")
    finally:
        os.umask(previous)
    assert saved.stat().st_mode & 0o777 == 0o644 and saved.read_bytes() == b"hello"
