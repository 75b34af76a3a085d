"""Tensors become media at a URL through the whole stack, and what comes back decodes to what went in."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

import ferry
from ferry.v1 import common_pb2, encoder_pb2


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def smooth_image(height: int = 96, width: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1).astype(np.uint8)


@pytest.fixture
def stack(ferry_serve):
    with ferry_serve.client() as client:
        yield ferry_serve, client


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "files").rglob("*") if p.is_file()] if (data_dir / "files").exists() else []


class TestImages:
    def test_png_is_pixel_exact_at_a_served_url(self, stack):
        _, client = stack
        image = smooth_image()
        (stored,) = client.encode_tensor(image, "png", file_name="gradient")
        assert stored.url.endswith("/gradient.png") and stored.content_type == "image/png"
        assert (stored.image.width, stored.image.height) == (128, 96)
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(stored.url))).convert("RGB"))
        assert np.array_equal(decoded, image)

    @pytest.mark.parametrize("fmt", ["jpeg", "webp"])
    def test_lossy_formats_keep_35_db_at_default_quality(self, stack, fmt):
        _, client = stack
        image = smooth_image()
        (stored,) = client.encode_tensor(image, fmt)
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(stored.url))).convert("RGB"))
        assert psnr(decoded, image) >= 35

    def test_chw_floats_in_minus_one_to_one(self, stack):
        _, client = stack
        image = smooth_image()
        chw = image.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
        (stored,) = client.encode_tensor(chw, "png", channel_order="first", value_range="-1,1")
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(stored.url))).convert("RGB")).astype(int)
        assert np.abs(decoded - image.astype(int)).max() <= 1

    def test_a_batch_gives_one_file_per_image(self, stack):
        _, client = stack
        batch = np.stack([smooth_image(), 255 - smooth_image()])
        files = client.encode_tensor(batch, "png")
        assert len(files) == 2 and len({f.url for f in files}) == 2

    def test_torch_tensors_are_accepted_without_the_sdk_importing_torch_first(self, stack):
        torch = pytest.importorskip("torch")
        _, client = stack
        tensor = torch.from_numpy(smooth_image()).permute(2, 0, 1).float() / 255
        (stored,) = client.encode_tensor(tensor, "png", channel_order="first")
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(stored.url))).convert("RGB")).astype(int)
        assert np.abs(decoded - smooth_image().astype(int)).max() <= 1


class TestOutputKeys:
    """An Encode with an output key (the runner's, for a request's outputs) replaces what the same key stored."""

    def test_encoding_again_with_the_same_key_replaces_the_files_at_the_same_urls(self, stack, tmp_path):
        _, client = stack
        batch = np.stack([smooth_image(), 255 - smooth_image()])
        first = client.encode_tensor(batch, "png", output_key="salt/request-1/images")
        before = len(stored_files(tmp_path / "data0"))
        again = client.encode_tensor(batch[::-1].copy(), "png", output_key="salt/request-1/images")

        assert [f.url for f in again] == [f.url for f in first] and len({f.url for f in first}) == 2
        assert len(stored_files(tmp_path / "data0")) == before
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(again[0].url))).convert("RGB"))
        assert np.array_equal(decoded, 255 - smooth_image())

    def test_a_video_under_a_key_is_replaced_too_and_another_key_stores_apart(self, stack):
        _, client = stack
        frames = np.stack([smooth_image(32, 32)] * 4)
        (first,) = client.encode_tensor(frames, "mp4", fps=8, output_key="salt/request-2/clip")
        (again,) = client.encode_tensor(frames, "mp4", fps=8, output_key="salt/request-2/clip")
        (other,) = client.encode_tensor(frames, "mp4", fps=8, output_key="salt/request-3/clip")

        assert again.url == first.url != other.url

    def test_an_output_key_over_256_bytes_is_refused_and_stores_nothing(self, stack, tmp_path):
        _, client = stack
        before = len(stored_files(tmp_path / "data0"))
        with pytest.raises(ferry.FerryError) as refused:
            client.encode_tensor(smooth_image(), "png", output_key="k" * 257)

        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_OUTPUT_KEY")
        assert len(stored_files(tmp_path / "data0")) == before


class TestStreamedJpeg:
    """An HW/HWC image's jpeg is encoded in strips as its rows arrive; the file decodes as a one-pass encode would."""

    def test_rows_streamed_in_decode_to_the_pixels_of_the_whole_image_path(self, stack):
        _, client = stack
        # 2.25 MiB: chunks split rows
        image = np.ascontiguousarray(np.roll(smooth_image(1024, 768), 5, axis=0) ^ np.uint8(0x15))
        (streamed,) = client.encode_tensor(image, "jpeg")
        # CHW rows do not arrive whole, so the same pixels sent planar take the receive-then-encode path.
        (whole,) = client.encode_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), "jpeg", channel_order="first")
        streamed_bytes, whole_bytes = fetch(streamed.url), fetch(whole.url)
        assert b"\xff\xdd" in streamed_bytes and b"\xff\xdd" not in whole_bytes  # strips joined by restart markers
        assert (streamed.image.width, streamed.image.height) == (768, 1024)
        decoded = np.asarray(PILImage.open(io.BytesIO(streamed_bytes)))
        assert np.array_equal(decoded, np.asarray(PILImage.open(io.BytesIO(whole_bytes))))
        assert psnr(decoded, image) >= 35

    @pytest.mark.parametrize("quality", [90, 60], ids=["4:4:4", "4:2:0"])
    def test_floats_and_gray_stream_too(self, stack, quality):
        _, client = stack
        gray = smooth_image(700, 501)[:, :, 0].astype(np.float32) / 255
        (stored,) = client.encode_tensor(gray, "jpeg", quality=quality)
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(stored.url))))
        assert decoded.shape == (700, 501)
        assert psnr(decoded, np.rint(gray * 255)) >= 35

    def test_nan_in_the_last_rows_is_refused_after_earlier_strips_encoded(self, stack, tmp_path):
        _, client = stack
        image = np.zeros((1024, 1024, 3), np.float32)
        image[-3:] = np.nan
        with pytest.raises(ferry.FerryError) as caught:
            client.encode_tensor(image, "jpeg")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert stored_files(tmp_path / "data0") == []
        assert client.health() == "SERVING"


class TestVideoAndAudio:
    def test_mp4_streams_in_and_decodes_with_exact_frame_count(self, stack):
        _, client = stack
        frames = np.stack([np.roll(smooth_image(96, 128), shift * 2, axis=1) for shift in range(24)])
        (stored,) = client.encode_tensor(frames, "mp4", fps=12)
        assert stored.content_type == "video/mp4"
        assert (stored.video.frame_count, stored.video.fps) == (24, 12)
        assert stored.video.duration_seconds == pytest.approx(2.0, abs=0.1)
        with av.open(io.BytesIO(fetch(stored.url))) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(decoded) == 24
        assert min(psnr(a, b) for a, b in zip(decoded, frames, strict=True)) >= 35

    def test_frames_split_across_messages_make_the_same_video_as_whole_frames(self, stack):
        _, client = stack
        frames = np.stack([np.roll(smooth_image(96, 128), shift * 3, axis=0) for shift in range(10)])
        (whole,) = client.encode_tensor(frames, "mp4", fps=10)
        header = encoder_pb2.EncodeHeader(
            tensor=common_pb2.TensorHeader(dtype=common_pb2.DATA_TYPE_UINT8, shape=list(frames.shape)),
            format=encoder_pb2.MEDIA_FORMAT_MP4,
            video=encoder_pb2.VideoOptions(fps=10),
        )
        data = frames.tobytes()
        uneven = [data[offset : offset + 10007] for offset in range(0, len(data), 10007)]  # no frame ends a message
        response = client.encoder.Encode(
            iter([encoder_pb2.EncodeRequest(header=header), *[encoder_pb2.EncodeRequest(chunk=c) for c in uneven]])
        )
        assert response.files[0].video.frame_count == 10
        assert fetch(response.files[0].url) == fetch(whole.url)  # x264 is deterministic: same frames, same bytes

    def test_wav_keeps_every_sample(self, stack):
        _, client = stack
        t = np.arange(16000) / 16000
        stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.5
        (stored,) = client.encode_tensor(stereo, "wav", channel_order="first", sample_rate=16000)
        assert (stored.audio.sample_rate, stored.audio.channels, stored.audio.sample_count) == (16000, 2, 16000)
        with av.open(io.BytesIO(fetch(stored.url))) as container:
            samples = sum(frame.samples for frame in container.decode(audio=0))
        assert samples == 16000


class TestBadInput:
    """Each case: a clear INVALID_ARGUMENT (or RESOURCE_EXHAUSTED), nothing stored, the server still serving."""

    def raw_encode(self, client, header, chunks):
        return client.encoder.Encode(
            iter([encoder_pb2.EncodeRequest(header=header), *[encoder_pb2.EncodeRequest(chunk=c) for c in chunks]])
        )

    @pytest.mark.parametrize(
        ("dtype", "shape", "data"),
        [
            (common_pb2.DATA_TYPE_UINT8, [4, 4, 3], b"\0" * 47),
            (common_pb2.DATA_TYPE_UINT8, [4, 4, 3], b"\0" * 49),
            (99, [4, 4, 3], b"\0" * 48),
            (common_pb2.DATA_TYPE_UINT8, [1, 1, 4, 4, 3], b"\0" * 48),
            (common_pb2.DATA_TYPE_UINT8, [5, 6, 2], b"\0" * 60),
            (common_pb2.DATA_TYPE_UINT8, [5, 6, 7], b"\0" * 210),
            (common_pb2.DATA_TYPE_UINT8, [0, 4, 3], b""),
        ],
        ids=["short", "long", "unknown-dtype", "5-d", "2-channels", "7-channels", "zero-dim"],
    )
    def test_malformed_tensors(self, stack, dtype, shape, data):
        _, client = stack
        header = encoder_pb2.EncodeHeader(
            tensor=common_pb2.TensorHeader(dtype=dtype, shape=shape), format=encoder_pb2.MEDIA_FORMAT_PNG
        )
        with pytest.raises(grpc.RpcError) as caught:
            self.raw_encode(client, header, [data] if data else [])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert client.health() == "SERVING"

    def test_nan_is_refused(self, stack):
        _, client = stack
        image = np.full((4, 4, 3), np.nan, dtype=np.float32)
        with pytest.raises(ferry.FerryError) as caught:
            client.encode_tensor(image, "png")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    def test_unknown_format_number_is_refused(self, stack):
        _, client = stack
        header = encoder_pb2.EncodeHeader(tensor=common_pb2.TensorHeader(dtype=1, shape=[2, 2]), format=42)
        with pytest.raises(grpc.RpcError) as caught:
            self.raw_encode(client, header, [b"\0" * 4])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_unknown_format_name_is_refused_by_the_sdk(self, stack):
        _, client = stack
        with pytest.raises(ValueError, match="bmp"):
            client.encode_tensor(np.zeros((2, 2), np.uint8), "bmp")

    def test_odd_video_sizes_can_be_rejected(self, stack):
        _, client = stack
        header = encoder_pb2.EncodeHeader(
            tensor=common_pb2.TensorHeader(dtype=1, shape=[2, 5, 7, 3]),
            format=encoder_pb2.MEDIA_FORMAT_MP4,
            video=encoder_pb2.VideoOptions(fps=10, odd_size_policy=encoder_pb2.ODD_SIZE_POLICY_REJECT),
        )
        with pytest.raises(grpc.RpcError) as caught:
            self.raw_encode(client, header, [b"\0" * (2 * 5 * 7 * 3)])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_video_frames_over_the_pixel_cap_are_refused_mid_stream_with_nothing_stored(self, start_ferry, tmp_path):
        server = start_ferry("encoder", "--max-pixels", "1000")
        frames = np.zeros((300, 40, 40, 3), np.uint8)  # 1600-pixel frames in two messages: refused while more arrive
        with server.client() as client, pytest.raises(ferry.FerryError) as refused:
            client.encode_tensor(frames, "mp4", fps=10)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.reason == "TOO_MANY_PIXELS"
        data_dir = tmp_path / "data0"
        assert stored_files(data_dir) == [] and list((data_dir / ".ferry" / "incoming").glob("*")) == []
        with server.client() as client:
            assert client.health() == "SERVING"

    def test_audio_without_a_sample_rate_is_refused(self, stack):
        _, client = stack
        with pytest.raises(ferry.FerryError) as caught:
            client.encode_tensor(np.zeros(100, np.float32), "wav")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    def test_a_client_dying_mid_stream_leaves_no_object(self, stack, tmp_path):
        _, client = stack
        data_dir = tmp_path / "data0"
        header = encoder_pb2.EncodeHeader(
            tensor=common_pb2.TensorHeader(dtype=1, shape=[64, 256, 256, 3]),
            format=encoder_pb2.MEDIA_FORMAT_MP4,
            video=encoder_pb2.VideoOptions(fps=10),
        )

        def dying():
            yield encoder_pb2.EncodeRequest(header=header)
            for _ in range(8):
                yield encoder_pb2.EncodeRequest(chunk=b"\x80" * (1 << 20))
            raise ConnectionError("the client process went away")

        with pytest.raises(grpc.RpcError):
            client.encoder.Encode(dying())
        time.sleep(0.5)  # let the server notice the cancellation and clean up
        assert stored_files(data_dir) == []
        assert list((data_dir / ".ferry" / "incoming").glob("*")) == []
        assert client.health() == "SERVING"


class TestUploadsAndLifecycle:
    def test_upload_returns_a_url_serving_the_bytes(self, stack, tmp_path):
        _, client = stack
        source = tmp_path / "notes.txt"
        source.write_text("hello")
        stored = client.upload_file(source)
        assert stored.content_type == "text/plain" and stored.file_size == 5
        assert fetch(stored.url) == b"hello"

    def test_module_helpers_return_urls(self, stack, monkeypatch, tmp_path):
        process, _ = stack
        monkeypatch.setenv("FERRY_ADDRESS", process.grpc_address)
        url = ferry.upload(b"\x89PNG fake", "image/png", "fake.png")
        assert fetch(url) == b"\x89PNG fake"
        image = PILImage.fromarray(smooth_image())
        assert PILImage.open(io.BytesIO(fetch(ferry.upload_image(image, format="png")))).size == (128, 96)

    def test_expired_objects_answer_404(self, stack):
        _, client = stack
        stored = client.upload_bytes(b"short-lived", "text/plain", "ephemeral.txt", expires_in=1)
        assert stored.HasField("expires_at")
        assert status(stored.url) == 200
        time.sleep(1.5)
        assert status(stored.url) == 404

    def test_lifecycle_metadata_header_sets_the_expiry(self, stack):
        _, client = stack
        header = encoder_pb2.UploadHeader(file_name="h.txt", content_type="text/plain", file_size=2)
        response = client.encoder.Upload(
            iter([encoder_pb2.UploadRequest(header=header), encoder_pb2.UploadRequest(chunk=b"hi")]),
            metadata=(("x-ferry-object-lifecycle-preference", '{"expiration_duration_seconds": 3600}'),),
        )
        remaining = response.file.expires_at.ToSeconds() - time.time()
        assert 3500 < remaining <= 3600

    def test_a_declared_size_that_does_not_match_is_refused(self, stack, tmp_path):
        _, client = stack
        header = encoder_pb2.UploadHeader(file_name="x.bin", file_size=10)
        with pytest.raises(grpc.RpcError) as caught:
            client.encoder.Upload(
                iter([encoder_pb2.UploadRequest(header=header), encoder_pb2.UploadRequest(chunk=b"abc")])
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert stored_files(tmp_path / "data0") == []
