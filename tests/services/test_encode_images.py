"""Image tensors become png, jpeg, webp and gif files that decode back (with Pillow) to what was sent."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageSequence

from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.services.encoder.images import EncodedImage, encode_images
from ferry.services.encoder.request import ImageOptions
from ferry.services.encoder.tensors import (
    ITEMSIZE,
    expected_bytes,
    image_batch,
    numpy_dtype,
    tensor_from_bytes,
    to_image_pixels,
    to_uint8,
)
from ferry.v1 import common_pb2, encoder_pb2

LAST = encoder_pb2.CHANNEL_ORDER_LAST
FIRST = encoder_pb2.CHANNEL_ORDER_FIRST
ZERO_TO_ONE = encoder_pb2.VALUE_RANGE_ZERO_TO_ONE
MINUS_ONE_TO_ONE = encoder_pb2.VALUE_RANGE_MINUS_ONE_TO_ONE
DEFAULTS = ImageOptions()  # each option the format's default


def natural_image(height: int = 96, width: int = 128) -> np.ndarray:
    """A sky gradient, a soft sun and a soft-edged box: smooth like a photo, not noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ripple = 0.1 * np.sin(x / 20)
    sky = np.stack([0.25 + 0.5 * y / height, 0.45 + 0.3 * y / height + ripple, 0.8 - 0.3 * y / height], -1)
    sun = np.clip((height / 5 - np.hypot(x - 0.6 * width, y - 0.4 * height)) / 3, 0, 1)[..., None]
    image = sky * (1 - sun) + sun * np.array([0.9, 0.7, 0.35])
    edge = np.maximum(np.abs(x - 0.2 * width) - 0.12 * width, np.abs(y - 0.75 * height) - 0.12 * height)
    box = np.clip(-edge / 3, 0, 1)[..., None]
    image = image * (1 - box) + box * np.array([0.2, 0.35, 0.6])
    return np.rint(image * 255).astype(np.uint8)


def palette_pixels(count: int, height: int, width: int, channels: int) -> np.ndarray:
    """N×H×W×C uint8 with at most 256 colours per image (gif can hold them exactly); alpha is 0 or 255."""
    rng = np.random.default_rng(count * 100 + channels)
    colours = rng.integers(0, 256, (count, 200, channels), dtype=np.uint8)
    if channels == 4:
        colours[:, :, 3] = np.where(colours[:, :, 3] < 64, 0, 255)
    picks = rng.integers(0, 200, (count, height, width))
    return colours[np.arange(count)[:, None, None], picks]


def arrange(batch: np.ndarray, layout: str) -> np.ndarray:
    """N×H×W×C pixels in the layout a client might send them."""
    return {
        "HW": lambda: batch[0, :, :, 0],
        "HWC": lambda: batch[0],
        "CHW": lambda: batch[0].transpose(2, 0, 1),
        "NHWC": lambda: batch,
        "NCHW": lambda: batch.transpose(0, 3, 1, 2),
    }[layout]()


def decoded(image: EncodedImage, mode: str | None = None) -> np.ndarray:
    """The file's pixels as H×W×C, decoded by Pillow (converted to `mode` when given)."""
    opened: Image.Image = Image.open(io.BytesIO(image.data))
    if mode is not None:
        opened = opened.convert(mode)
    pixels = np.asarray(opened)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def frames_of(image: EncodedImage) -> list[tuple[np.ndarray, int]]:
    """Each frame of an animation with its duration in ms."""
    frames = []
    for frame in ImageSequence.Iterator(Image.open(io.BytesIO(image.data))):
        pixels = np.asarray(frame.convert("RGB"))  # loading the frame fills in its duration
        frames.append((pixels, frame.info["duration"]))
    return frames


# -- layouts and channel counts -------------------------------------------------------------

LAYOUTS = [("HW", 1), *[(layout, c) for layout in ("HWC", "CHW", "NHWC", "NCHW") for c in (1, 3, 4)]]


@pytest.mark.parametrize(("layout", "channels"), LAYOUTS)
@pytest.mark.parametrize("fmt", ["png", "gif", "webp"])
def test_lossless_formats_return_the_exact_pixels_of_every_layout(fmt: str, layout: str, channels: int) -> None:
    batch = palette_pixels(2, 10, 14, channels)
    sent = arrange(batch, layout)
    images = encode_images(sent, fmt, ImageOptions(lossless=True))
    expected = batch[: len(images)]
    assert len(images) == (2 if layout.startswith("N") else 1)
    for image, pixels in zip(images, expected, strict=True):
        assert (image.width, image.height) == (14, 10)
        if fmt == "gif" and channels == 4:  # one transparent palette entry: colour survives where opaque
            back = decoded(image, "RGBA")
            assert np.array_equal(back[:, :, 3], pixels[:, :, 3])
            opaque = pixels[:, :, 3] == 255
            assert np.array_equal(back[opaque], pixels[opaque])
        elif channels == 1:  # webp has no gray mode; it decodes as three equal channels
            assert np.array_equal(decoded(image, "L"), pixels)
        else:
            assert np.array_equal(decoded(image, "RGBA" if channels == 4 else "RGB"), pixels)


@pytest.mark.parametrize(("layout", "channels"), LAYOUTS)
@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_formats_keep_the_picture_in_every_layout(fmt: str, layout: str, channels: int) -> None:
    rgb = natural_image(48, 64)
    if channels == 1:
        batch = rgb[None, :, :, :1]
    else:
        alpha = np.full((48, 64, 1), 255, np.uint8)
        batch = (rgb if channels == 3 else np.concatenate([rgb, alpha], axis=2))[None]
    [image, *_] = encode_images(arrange(np.concatenate([batch, batch]), layout), fmt, DEFAULTS)
    compared = "L" if channels == 1 else "RGB"
    assert psnr(decoded(image, compared), batch[0, :, :, :3]) >= 35  # a transposed or swapped image scores < 20


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_default_quality_reaches_35_db_on_natural_content(fmt: str) -> None:
    image = natural_image()
    [encoded] = encode_images(image, fmt, DEFAULTS)
    assert psnr(decoded(encoded, "RGB"), image) >= 35  # measured: jpeg 45.4 dB, webp 40.9 dB


def test_lower_quality_gives_smaller_jpeg_and_webp() -> None:
    image = natural_image()
    for fmt in ("jpeg", "webp"):
        [small] = encode_images(image, fmt, ImageOptions(quality=30))
        [large] = encode_images(image, fmt, ImageOptions(quality=95))
        assert len(small.data) < len(large.data)


def test_webp_lossless_is_exact_on_natural_content_and_lossy_is_not() -> None:
    image = natural_image()
    [lossless] = encode_images(image, "webp", ImageOptions(lossless=True))
    [lossy] = encode_images(image, "webp", DEFAULTS)
    assert np.array_equal(decoded(lossless, "RGB"), image)
    assert not np.array_equal(decoded(lossy, "RGB"), image)


def test_jpeg_drops_alpha() -> None:
    rgba = np.concatenate([natural_image(), np.zeros((96, 128, 1), np.uint8)], axis=2)
    [image] = encode_images(rgba, "jpeg", DEFAULTS)
    assert Image.open(io.BytesIO(image.data)).mode == "RGB"
    assert psnr(decoded(image), rgba[:, :, :3]) >= 35


def test_each_format_names_its_content_type_and_extension() -> None:
    pixels = palette_pixels(1, 8, 8, 3)[0]
    described = {fmt: encode_images(pixels, fmt, DEFAULTS)[0] for fmt in ("png", "jpeg", "webp", "gif")}
    assert {fmt: (i.content_type, i.extension) for fmt, i in described.items()} == {
        "png": ("image/png", ".png"),
        "jpeg": ("image/jpeg", ".jpg"),
        "webp": ("image/webp", ".webp"),
        "gif": ("image/gif", ".gif"),
    }
    assert {Image.open(io.BytesIO(i.data)).format for i in described.values()} == {"PNG", "JPEG", "WEBP", "GIF"}


def test_png_compress_level_trades_size_not_pixels() -> None:
    image = natural_image()
    [stored] = encode_images(image, "png", ImageOptions(png_compress_level=0))
    [fast] = encode_images(image, "png", DEFAULTS)
    [small] = encode_images(image, "png", ImageOptions(png_compress_level=9))
    assert len(stored.data) > len(fast.data) >= len(small.data)
    for encoded in (stored, fast, small):
        assert np.array_equal(decoded(encoded), image)


# -- value types ----------------------------------------------------------------------------


def test_uint16_gray_png_stays_16_bit() -> None:
    depth = (np.arange(10 * 14, dtype=np.uint16).reshape(10, 14) * 467).astype(np.uint16)
    [image] = encode_images(depth, "png", DEFAULTS)
    opened = Image.open(io.BytesIO(image.data))
    assert opened.mode == "I;16"
    assert np.array_equal(np.asarray(opened), depth)


def test_uint16_rgb_png_and_other_formats_are_reduced_to_8_bits() -> None:
    eight = palette_pixels(1, 10, 14, 3)[0]
    sixteen = eight.astype(np.uint16) * 257  # 257 × v is v at 16 bits
    [png] = encode_images(sixteen, "png", DEFAULTS)
    assert Image.open(io.BytesIO(png.data)).mode == "RGB"
    assert np.array_equal(decoded(png), eight)
    [gray_gif] = encode_images(sixteen[:, :, :1], "gif", DEFAULTS)
    assert np.array_equal(decoded(gray_gif, "L"), eight[:, :, :1])


def test_floats_zero_to_one_map_onto_0_255_and_clamp() -> None:
    values = np.array([[-0.5, 0.0, 0.5, 1.0, 1.5, 0.2]], np.float32)
    assert to_uint8(values, encoder_pb2.VALUE_RANGE_UNSPECIFIED).tolist() == [[0, 0, 128, 255, 255, 51]]
    assert to_uint8(values, ZERO_TO_ONE).tolist() == [[0, 0, 128, 255, 255, 51]]
    [image] = encode_images(values, "png", DEFAULTS)
    assert decoded(image)[:, :, 0].tolist() == [[0, 0, 128, 255, 255, 51]]


def test_floats_minus_one_to_one_map_onto_0_255_and_clamp() -> None:
    values = np.array([[-2.0, -1.0, 0.0, 1.0, 3.0]], np.float64)
    assert to_uint8(values, MINUS_ONE_TO_ONE).tolist() == [[0, 0, 128, 255, 255]]
    [image] = encode_images(values, "png", ImageOptions(value_range=MINUS_ONE_TO_ONE))
    assert decoded(image)[:, :, 0].tolist() == [[0, 0, 128, 255, 255]]


def test_float16_and_bfloat16_tensors_become_pixels() -> None:
    half = np.array([[0.0, 0.5, 1.0]], np.float16)
    tensor = tensor_from_bytes(common_pb2.DATA_TYPE_FLOAT16, [1, 3], half.tobytes())
    assert to_uint8(tensor, 0).tolist() == [[0, 128, 255]]
    bfloat16_bits = (np.array([[0.0, 0.5, 1.0]], np.float32).view(np.uint32) >> 16).astype("<u2")
    tensor = tensor_from_bytes(common_pb2.DATA_TYPE_BFLOAT16, [1, 3], bfloat16_bits.tobytes())
    assert tensor.dtype == np.float32 and tensor.tolist() == [[0.0, 0.5, 1.0]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_rejected(bad: float) -> None:
    values = np.zeros((5, 6, 3), np.float32)
    values[1, 2, 0] = bad
    with pytest.raises(InvalidArgument) as error:
        encode_images(values, "png", DEFAULTS)
    assert error.value.reason == "NON_FINITE"


def test_bool_is_a_black_and_white_mask() -> None:
    mask = np.array([[True, False], [False, True]])
    [image] = encode_images(mask, "png", DEFAULTS)
    assert decoded(image)[:, :, 0].tolist() == [[255, 0], [0, 255]]


def test_other_integers_pass_when_they_already_are_0_to_255() -> None:
    values = np.array([[0, 17, 255]], np.int32)
    [image] = encode_images(values, "png", DEFAULTS)
    assert decoded(image)[:, :, 0].tolist() == [[0, 17, 255]]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_other_integers_outside_0_to_255_are_rejected_by_name(dtype: type[np.integer]) -> None:
    values = np.array([[0, -1, 100]], dtype)
    with pytest.raises(InvalidArgument) as error:
        encode_images(values, "png", DEFAULTS)
    assert error.value.reason == "VALUE_OUT_OF_RANGE"
    assert np.dtype(dtype).name in error.value.message


def test_png_keeps_16_bits_only_when_asked() -> None:
    values = np.array([[0, 65535, 257 * 100]], np.uint16)
    assert to_image_pixels(values, 0, keep_16_bit=True) is values
    assert to_image_pixels(values, 0, keep_16_bit=False).tolist() == [[0, 255, 100]]


# -- batches and animations -----------------------------------------------------------------


def test_a_batch_gives_one_file_per_image() -> None:
    batch = palette_pixels(5, 10, 14, 3)
    images = encode_images(batch, "png", DEFAULTS)
    assert len(images) == 5
    for image, pixels in zip(images, batch, strict=True):
        assert np.array_equal(decoded(image), pixels)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animate_makes_one_file_with_every_frame_its_duration_and_loop(fmt: str) -> None:
    batch = palette_pixels(4, 10, 14, 3)
    [animation] = encode_images(batch, fmt, ImageOptions(animate=True, frame_duration_ms=70, loop=3, lossless=True))
    frames = frames_of(animation)
    assert [duration for _, duration in frames] == [70, 70, 70, 70]
    assert all(np.array_equal(back, sent) for (back, _), sent in zip(frames, batch, strict=True))
    assert Image.open(io.BytesIO(animation.data)).info["loop"] == 3


def test_animated_gif_frames_keep_their_own_transparency() -> None:
    batch = palette_pixels(3, 10, 14, 4)
    [animation] = encode_images(batch, "gif", ImageOptions(animate=True))
    opened = Image.open(io.BytesIO(animation.data))
    for index, sent in enumerate(batch):
        opened.seek(index)
        back = np.asarray(opened.convert("RGBA"))
        assert np.array_equal(back[:, :, 3], sent[:, :, 3])  # no earlier frame shows through
        opaque = sent[:, :, 3] == 255
        assert np.array_equal(back[opaque], sent[opaque])


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animation_defaults_to_100_ms_frames_looping_forever(fmt: str) -> None:
    [animation] = encode_images(palette_pixels(3, 10, 14, 1), fmt, ImageOptions(animate=True))
    assert [duration for _, duration in frames_of(animation)] == [100, 100, 100]
    assert Image.open(io.BytesIO(animation.data)).info["loop"] == 0


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_png_and_jpeg_cannot_be_animated(fmt: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_images(palette_pixels(2, 10, 14, 3), fmt, ImageOptions(animate=True))
    assert error.value.reason == "ANIMATION_UNSUPPORTED"


# -- what tensors.py accepts ----------------------------------------------------------------

dtypes = st.sampled_from(sorted(ITEMSIZE))


@given(dtype=dtypes, shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=4))
def test_bytes_of_any_dtype_and_shape_come_back_as_the_tensor(dtype: int, shape: tuple[int, ...]) -> None:
    wire = numpy_dtype(dtype)
    sent = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape).astype(wire)
    assert wire.itemsize == ITEMSIZE[dtype]
    assert expected_bytes(dtype, shape) == sent.nbytes
    back = tensor_from_bytes(dtype, shape, sent.tobytes())
    assert back.shape == shape
    if dtype == common_pb2.DATA_TYPE_BFLOAT16:
        assert np.array_equal(back.view(np.uint32) >> 16, sent)
    else:
        assert np.array_equal(back, sent)


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_wrong_byte_count_is_rejected_naming_both_numbers(extra: int) -> None:
    data = bytes(2 * 3 * 4 + extra)
    with pytest.raises(InvalidArgument) as error:
        tensor_from_bytes(common_pb2.DATA_TYPE_UINT8, [2, 3, 4], data)
    assert error.value.reason == "TENSOR_SIZE_MISMATCH"
    assert "24" in error.value.message and str(24 + extra) in error.value.message


@pytest.mark.parametrize("dtype", [common_pb2.DATA_TYPE_UNSPECIFIED, 99])
def test_unknown_dtypes_are_rejected(dtype: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        tensor_from_bytes(dtype, [2, 2], bytes(4))
    assert error.value.reason == "BAD_DTYPE"


@pytest.mark.parametrize("shape", [[], [0], [4, 0, 3], [1, 1, 1, 1, 1, 1], [1 << 30, 1 << 30, 3]])
def test_empty_dimensions_too_many_dimensions_and_absurd_sizes_are_rejected(shape: list[int]) -> None:
    with pytest.raises(InvalidArgument) as error:
        expected_bytes(common_pb2.DATA_TYPE_UINT8, shape)
    assert error.value.reason == "BAD_SHAPE"


@pytest.mark.parametrize(
    "shape", [(1, 1, 8, 8, 3), (8,), (8, 8, 2), (8, 8, 7), (2, 8, 8), (7, 8, 8), (2, 8, 8, 2), (0, 8, 8, 3), (8, 0)]
)
def test_five_dimensions_empty_images_and_channel_counts_other_than_1_3_4_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_images(np.zeros(shape, np.uint8), "png", DEFAULTS)
    assert error.value.reason == "BAD_SHAPE"


def test_channel_counts_other_than_1_3_4_are_rejected_with_an_explicit_order_too() -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_images(np.zeros((2, 8, 8), np.uint8), "png", DEFAULTS, channel_order=FIRST)
    assert error.value.reason == "BAD_SHAPE"


def test_a_shape_with_channels_plausible_at_both_ends_needs_a_channel_order() -> None:
    pixels = palette_pixels(1, 3, 8, 4)[0]  # 3×8×4: RGBA of height 3, or RGB of width 4?
    with pytest.raises(InvalidArgument) as error:
        encode_images(pixels, "png", DEFAULTS)
    assert error.value.reason == "AMBIGUOUS_LAYOUT"
    assert "channel_order" in error.value.message
    [image] = encode_images(pixels, "png", DEFAULTS, channel_order=LAST)
    assert np.array_equal(decoded(image), pixels)
    assert image_batch(pixels, FIRST).shape == (1, 8, 4, 3)


def test_an_image_over_the_pixel_cap_is_refused() -> None:
    with pytest.raises(ResourceExhausted) as error:
        encode_images(np.zeros((10, 11), np.uint8), "png", DEFAULTS, max_pixels=100)
    assert error.value.reason == "TOO_MANY_PIXELS"
    assert len(encode_images(np.zeros((10, 10), np.uint8), "png", DEFAULTS, max_pixels=100)) == 1


@pytest.mark.parametrize("fmt", ["bmp", "jpg", "PNG", "mp4", ""])
def test_unknown_format_names_are_rejected(fmt: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_images(np.zeros((8, 8), np.uint8), fmt, DEFAULTS)
    assert error.value.reason == "BAD_FORMAT"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (ImageOptions(quality=0), "BAD_QUALITY"),
        (ImageOptions(quality=101), "BAD_QUALITY"),
        (ImageOptions(png_compress_level=10), "BAD_COMPRESS_LEVEL"),
        (ImageOptions(frame_duration_ms=-1), "BAD_FRAME_DURATION"),
        (ImageOptions(loop=70_000), "BAD_LOOP"),
        (ImageOptions(value_range=9), "BAD_VALUE_RANGE"),
    ],
)
def test_out_of_range_options_are_rejected(options: ImageOptions, reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_images(np.zeros((8, 8), np.float32), "webp", options)
    assert error.value.reason == reason


def test_an_unknown_channel_order_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_images(np.zeros((8, 8), np.float32), "webp", DEFAULTS, channel_order=7)
    assert error.value.reason == "BAD_CHANNEL_ORDER"
