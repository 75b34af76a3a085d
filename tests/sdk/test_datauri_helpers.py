"""`ferry.datauri` writes RFC 2397 base64 data URIs that decode back to exactly what went in."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from ferry import datauri


def split(uri: str) -> tuple[str, bytes]:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(payload, validate=True)


def gradient(mode: str = "RGB", size: tuple[int, int] = (48, 32)) -> Image.Image:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height), np.full_like(x, 200)], -1
    )
    return Image.fromarray(pixels.astype(np.uint8), "RGBA").convert(mode)


@pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 3])
def test_bytes_round_trip_through_base64(data):
    assert split(datauri.encode(data, "application/x-test")) == ("application/x-test", data)


def test_content_type_parameters_are_kept():
    uri = datauri.encode("héllo".encode(), "text/plain;charset=utf-8")
    assert uri.startswith("data:text/plain;charset=utf-8;base64,")
    assert split(uri)[1].decode() == "héllo"


def test_a_comma_in_the_content_type_is_refused():
    with pytest.raises(ValueError, match="','"):
        datauri.encode(b"x", "text/plain,evil")


def test_a_file_is_encoded_with_the_type_its_name_suggests(tmp_path):
    path = tmp_path / "notes.json"
    path.write_bytes(b'{"a": 1}')
    assert split(datauri.encode_file(path)) == ("application/json", b'{"a": 1}')


def test_an_explicit_content_type_wins_over_the_name(tmp_path):
    path = tmp_path / "notes.json"
    path.write_bytes(b"{}")
    assert split(datauri.encode_file(str(path), "text/plain"))[0] == "text/plain"


def test_an_unknown_extension_is_octet_stream(tmp_path):
    path = tmp_path / "blob.ferry-unknown"
    path.write_bytes(b"\x00\x01")
    assert split(datauri.encode_file(path)) == ("application/octet-stream", b"\x00\x01")


def test_png_images_decode_back_pixel_for_pixel():
    image = gradient("RGBA")
    content_type, data = split(datauri.encode_image(image, format="png"))
    assert content_type == "image/png"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.mode == "RGBA"
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_jpeg_is_the_default_and_decodes_close_to_the_original():
    image = gradient()
    content_type, data = split(datauri.encode_image(image, quality=95))
    decoded = Image.open(io.BytesIO(data))
    assert content_type == "image/jpeg" and decoded.format == "JPEG" and decoded.size == image.size
    error = np.abs(np.asarray(decoded, dtype=np.int16) - np.asarray(image, dtype=np.int16)).mean()
    assert error < 3


def test_jpeg_quality_is_passed_to_the_encoder():
    image = gradient(size=(128, 128))
    small = split(datauri.encode_image(image, "jpeg", quality=10))[1]
    large = split(datauri.encode_image(image, "jpeg", quality=95))[1]
    assert len(small) < len(large)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA"])
def test_images_jpeg_cannot_hold_are_flattened_to_rgb(mode):
    data = split(datauri.encode_image(gradient(mode), "jpg"))[1]
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG" and decoded.mode == "RGB"


@pytest.mark.parametrize(
    ("format", "content_type"), [("webp", "image/webp"), ("gif", "image/gif"), ("PNG", "image/png")]
)
def test_other_formats_carry_their_own_content_type(format, content_type):
    uri = datauri.encode_image(gradient(), format)
    assert split(uri)[0] == content_type
    assert Image.open(io.BytesIO(split(uri)[1])).size == (48, 32)


def test_a_format_pillow_cannot_write_is_refused():
    with pytest.raises(ValueError, match="cannot write"):
        datauri.encode_image(gradient(), "ferry-unknown")
