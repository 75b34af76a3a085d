"""JPEG strips encoded apart and stitched with restart markers decode to the pixels of one whole encode."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from ferry.services.encoder.jpeg import MAX_RESTART_INTERVAL, encode_strip, mcu_size, stitch_strips, strip_rows


def natural(height: int, width: int, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(height * width)
    planes = [np.sin(x / 17 + c) * 90 + y / height * 120 + rng.normal(0, 8, (height, width)) for c in range(channels)]
    return np.clip(np.stack(planes, axis=-1) + 20, 0, 255).astype(np.uint8)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def striped(pixels: np.ndarray, rows: int, subsampling: str, quality: int = 90) -> bytes:
    height, width, channels = pixels.shape
    strips = [encode_strip(pixels[top : top + rows], quality, subsampling) for top in range(0, height, rows)]
    return stitch_strips(strips, height, width, rows, mcu_size(channels, subsampling))


@pytest.mark.parametrize(
    ("height", "width", "channels", "subsampling", "rows"),
    [
        (256, 320, 3, "4:4:4", 64),  # strips of equal height
        (250, 333, 3, "4:4:4", 64),  # odd sides: a short last strip, a part-filled last MCU column
        (256, 320, 3, "4:2:0", 32),  # 16×16 MCUs
        (250, 333, 3, "4:2:0", 48),
        (200, 199, 1, "4:4:4", 40),  # gray
        (128, 96, 4, "4:4:4", 16),  # RGBA: jpeg keeps the colour, drops alpha
    ],
)
def test_stitched_strips_decode_to_the_pixels_of_one_whole_encode(height, width, channels, subsampling, rows):
    pixels = natural(height, width, channels)
    whole = encode_strip(pixels, 90, subsampling)
    stitched = striped(pixels, rows, subsampling)
    assert stitched.count(b"\xff\xdd") == 1  # one restart interval declared
    assert np.array_equal(decode(stitched), decode(whole))


def test_an_independent_decoder_reads_the_stitched_file_as_the_whole_one():
    pixels = natural(240, 320)

    def ffmpeg_decode(data: bytes) -> np.ndarray:
        with av.open(io.BytesIO(data)) as container:
            return next(container.decode(video=0)).to_ndarray(format="rgb24")

    whole = ffmpeg_decode(encode_strip(pixels, 90, "4:4:4"))
    assert np.array_equal(ffmpeg_decode(striped(pixels, 64, "4:4:4")), whole)


def test_one_strip_is_returned_as_it_is():
    strip = encode_strip(natural(64, 64), 90, "4:4:4")
    assert stitch_strips([strip], 64, 64, 64, 8) == strip


class TestStripRows:
    def test_rows_are_whole_mcus(self):
        for mcu in (8, 16):
            for height in (1, 15, 100, 1024, 4097):
                rows = strip_rows(height, 1024, mcu, parts=4)
                assert rows % mcu == 0 and rows >= mcu

    def test_strips_split_the_image_about_evenly(self):
        assert strip_rows(1024, 1024, 8, parts=4) == 256
        assert strip_rows(1024, 1024, 16, parts=3) == 352  # 342 rounded up to whole MCUs

    def test_small_images_are_not_cut_into_slivers(self):
        assert strip_rows(64, 64, 8, parts=16) == 64

    def test_a_wide_image_keeps_the_restart_interval_in_16_bits(self):
        width = 65_535
        rows = strip_rows(8192, width, 8, parts=1)
        assert (rows // 8) * -(-width // 8) <= MAX_RESTART_INTERVAL
