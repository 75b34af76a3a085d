"""Image tensors into png, jpeg, webp and gif files, one per image or one animation.

Defaults aim at outputs people keep (PSNR ≥ 35 dB on smooth natural content):
jpeg quality 90 with full-resolution chroma, webp quality 90, png zlib level 1
(fast, like the reference toolkit: model outputs are written once and rarely
re-read, so the CPU is worth more than the last few percent of size).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ferry.errors import InvalidArgument
from ferry.services.encoder.jpeg import encode_strip
from ferry.services.encoder.request import ImageOptions
from ferry.services.encoder.tensors import DEFAULT_MAX_PIXELS, image_batch, to_image_pixels

IMAGE_FORMATS = ("png", "jpeg", "webp", "gif")
ANIMATED_FORMATS = ("gif", "webp")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "gif": ".gif"}

JPEG_QUALITY = 90
WEBP_QUALITY = 90
# Below this, a caller trading quality for size also gets 4:2:0 chroma; at and above
# it, chroma keeps full resolution: 4:2:0 alone caps saturated edges near 31 dB.
JPEG_FULL_CHROMA_QUALITY = 90
PNG_COMPRESS_LEVEL = 1
WEBP_METHOD = 4  # libwebp's speed/size trade-off; Pillow's still default, which animations otherwise drop to 0
FRAME_DURATION_MS = 100
MAX_FRAME_DURATION_MS = 655_350  # gif stores hundredths of a second in 16 bits
GIF_OPAQUE_COLOURS = 255  # a gif palette holds 256: the last one is transparency
GIF_TRANSPARENT_INDEX = 255
MAX_LOOP = 65_535  # both gif and webp store the loop count in 16 bits


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    extension: str  # with its dot: ".jpg"
    width: int
    height: int


def encode_images(
    array: np.ndarray,
    fmt: str,
    options: ImageOptions,
    *,
    channel_order: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[EncodedImage]:
    """One file per image of the batch, or a single animated gif/webp when `options.animate`.

    png keeps uint16 input at 16 bits for single-channel images only: Pillow
    cannot write 16-bit RGB(A) png, so those are reduced to 8 bits. jpeg has no
    alpha, so RGBA loses it. gif is a 256-colour palette per frame (exact for
    gray images and for images with at most 256 colours; with alpha, 255 colours
    plus one transparent entry for pixels under alpha 128); its frame durations
    are kept in 10 ms steps, and identical consecutive frames merge into one.
    `quality` applies to jpeg and lossy webp (libwebp's effort when lossless);
    `frame_duration_ms` 0 means 100 ms; `loop` 0 means forever.
    """
    check_image_options(fmt, options)
    batch = image_batch(array, channel_order, max_pixels=max_pixels)
    if fmt == "jpeg":  # libjpeg-turbo without Pillow: the same path striped encodes take (see jpeg.py)
        settings = jpeg_settings(options.quality)
        return [_jpeg(to_image_pixels(image, options.value_range, False), *settings) for image in batch]
    keep_16_bit = fmt == "png" and batch.shape[3] == 1
    frames = [_pil_image(to_image_pixels(image, options.value_range, keep_16_bit)) for image in batch]
    save = _save_options(fmt, options)
    if fmt == "gif" and batch.shape[3] == 4:
        frames = [_gif_with_transparency(frame) for frame in frames]
        save["disposal"] = 2  # clear each frame before the next: else old frames show through its holes
    if options.animate:
        save |= {
            "save_all": True,
            "append_images": frames[1:],
            "duration": options.frame_duration_ms or FRAME_DURATION_MS,
            "loop": options.loop,
        }
        return [_encoded(frames[0], fmt, save)]
    return [_encoded(frame, fmt, save) for frame in frames]


def check_quality(quality: int | None) -> None:
    if quality is not None and not 1 <= quality <= 100:
        raise InvalidArgument(f"quality {quality} is outside 1..100", reason="BAD_QUALITY")


def check_image_options(fmt: str, options: ImageOptions) -> None:
    """The options' rules, which read no pixel: a request is checked against them before its tensor arrives."""
    if fmt not in IMAGE_FORMATS:
        known = ", ".join(IMAGE_FORMATS)
        raise InvalidArgument(f"unknown image format {fmt!r}; use one of {known}", reason="BAD_FORMAT")
    if options.animate and fmt not in ANIMATED_FORMATS:
        raise InvalidArgument(f"{fmt} cannot be animated; use gif or webp", reason="ANIMATION_UNSUPPORTED")
    check_quality(options.quality)
    if (level := options.png_compress_level) is not None and not 0 <= level <= 9:
        raise InvalidArgument(f"png_compress_level {level} is outside 0..9", reason="BAD_COMPRESS_LEVEL")
    if not 0 <= options.frame_duration_ms <= MAX_FRAME_DURATION_MS:
        raise InvalidArgument(
            f"frame_duration_ms {options.frame_duration_ms} is outside 0..{MAX_FRAME_DURATION_MS}",
            reason="BAD_FRAME_DURATION",
        )
    if not 0 <= options.loop <= MAX_LOOP:
        raise InvalidArgument(f"loop {options.loop} is outside 0..{MAX_LOOP}", reason="BAD_LOOP")


def _pil_image(pixels: np.ndarray) -> Image.Image:
    """H×W×C uint8/uint16 → L, I;16, RGB or RGBA (Pillow picks the mode from dtype and shape)."""
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(pixels))


def _gif_with_transparency(rgba: Image.Image) -> Image.Image:
    """A palette image whose index 255 is transparent (alpha below 128); opaque colours are exact up to 255.

    Pillow's own RGBA → palette conversion merges colours even when there are few.
    """
    paletted = rgba.convert("RGB").quantize(GIF_OPAQUE_COLOURS, method=Image.Quantize.MEDIANCUT)
    paletted.paste(GIF_TRANSPARENT_INDEX, mask=Image.fromarray(np.asarray(rgba)[:, :, 3] < 128))
    paletted.info["transparency"] = GIF_TRANSPARENT_INDEX
    return paletted


def _save_options(fmt: str, options: ImageOptions) -> dict[str, Any]:
    if fmt == "png":
        level = options.png_compress_level
        return {"compress_level": PNG_COMPRESS_LEVEL if level is None else level}
    if fmt == "webp":
        # exact: a lossless file keeps the colour under fully transparent pixels too.
        webp_quality = WEBP_QUALITY if options.quality is None else options.quality
        return {"quality": webp_quality, "lossless": options.lossless, "exact": options.lossless, "method": WEBP_METHOD}
    return {}  # gif: Pillow picks an adaptive palette per frame


def jpeg_settings(quality: int | None) -> tuple[int, str]:
    """(quality, chroma subsampling) for a requested jpeg quality (None: the default)."""
    jpeg_quality = JPEG_QUALITY if quality is None else quality
    return jpeg_quality, "4:4:4" if jpeg_quality >= JPEG_FULL_CHROMA_QUALITY else "4:2:0"


def encoded_jpeg(data: bytes, width: int, height: int) -> EncodedImage:
    return EncodedImage(data, CONTENT_TYPES["jpeg"], EXTENSIONS["jpeg"], width, height)


def _jpeg(pixels: np.ndarray, quality: int, subsampling: str) -> EncodedImage:
    height, width = pixels.shape[:2]
    return encoded_jpeg(encode_strip(pixels, quality, subsampling), width, height)


def _encoded(image: Image.Image, fmt: str, options: dict[str, Any]) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **options)
    return EncodedImage(buffer.getvalue(), CONTENT_TYPES[fmt], EXTENSIONS[fmt], image.width, image.height)
