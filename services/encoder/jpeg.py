"""JPEG in horizontal strips, encoded in parallel and stitched into one baseline file.

Every strip is a whole number of MCU rows, encoded on its own with the same
quality, subsampling and (standard) Huffman tables. A baseline JPEG may carry
a restart interval (DRI): at each restart marker the decoder resets its DC
predictors — exactly the state a separately encoded strip starts from. So the
strips' entropy-coded segments, joined by RST0…RST7 under the first strip's
headers (its height patched to the whole image's), decode to the same pixels
as a single-pass encode of the image.

This is what lets the encoder start on the top of an image while its bottom is
still arriving over gRPC, and use every core for one image. libjpeg-turbo is
driven through simplejpeg because it releases the GIL while it encodes (Pillow's
JPEG encoder holds it, so its strips would run one at a time).
"""

from __future__ import annotations

import struct

import numpy as np
import simplejpeg

from ferry.errors import InvalidArgument

JPEG_MAX_SIDE = 65_535  # SOF stores 16-bit dimensions
MAX_RESTART_INTERVAL = 65_535  # DRI stores a 16-bit MCU count
# Strips big enough that their headers and thread handoffs stay noise (~1% of a strip's bytes).
MIN_STRIP_PIXELS = 64 * 1024

_SOI, _EOI, _SOS, _DRI = 0xD8, 0xD9, 0xDA, 0xDD
_START_OF_FRAME = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive
_RST0 = 0xD0


def mcu_size(channels: int, subsampling: str) -> int:
    """An MCU's side in pixels: 16 when colour is 4:2:0, else 8 (4:4:4 and gray)."""
    return 16 if channels >= 3 and subsampling == "4:2:0" else 8


def strip_rows(height: int, width: int, mcu: int, parts: int) -> int:
    """Rows per strip: about `height / parts`, a multiple of the MCU height, within JPEG's restart limit."""
    mcus_per_row = -(-width // 8)  # the widest MCU (4:2:0's is 16) only makes the real count smaller
    most = max(1, MAX_RESTART_INTERVAL // mcus_per_row) * mcu
    least = -(-MIN_STRIP_PIXELS // width)
    wanted = max(-(-height // max(1, parts)), least)
    rows = min(-(-wanted // mcu), -(-height // mcu)) * mcu
    return max(mcu, min(rows, most))


def encode_strip(pixels: np.ndarray, quality: int, subsampling: str) -> bytes:
    """One H×W×C uint8 strip (C 1, 3 or 4; alpha is dropped) as a complete JPEG."""
    channels = pixels.shape[2]
    if max(pixels.shape[:2]) > JPEG_MAX_SIDE:
        raise InvalidArgument(f"jpeg sides are at most {JPEG_MAX_SIDE} pixels", reason="TOO_LARGE_FOR_FORMAT")
    colorspace = {1: "GRAY", 3: "RGB", 4: "RGBA"}[channels]
    return bytes(
        simplejpeg.encode_jpeg(
            np.ascontiguousarray(pixels),
            quality=quality,
            colorspace=colorspace,
            colorsubsampling="Gray" if channels == 1 else subsampling.replace(":", ""),
        )
    )


def _segments(data: bytes) -> tuple[int, int]:
    """(offset of SOS, offset where its entropy-coded data starts) in one encoded strip."""
    if data[:2] != bytes((0xFF, _SOI)) or data[-2:] != bytes((0xFF, _EOI)):
        raise ValueError("not a complete JPEG")
    at = 2
    while True:
        marker = data[at + 1]
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker == _SOS:
            return at, at + 2 + length
        at += 2 + length


def stitch_strips(strips: list[bytes], height: int, width: int, rows_per_strip: int, mcu: int) -> bytes:
    """One baseline JPEG of `height` rows from strips of `rows_per_strip` rows (the last may be shorter)."""
    if len(strips) == 1:
        return strips[0]
    first = strips[0]
    sos, _ = _segments(first)
    headers = bytearray(first[:sos])
    at = 2
    while at < sos:
        marker = headers[at + 1]
        (length,) = struct.unpack_from(">H", headers, at + 2)
        if marker in _START_OF_FRAME:
            struct.pack_into(">H", headers, at + 5, height)  # after length and precision
        at += 2 + length
    interval = (rows_per_strip // mcu) * -(-width // mcu)
    out = bytearray(headers)
    out += struct.pack(">BBHH", 0xFF, _DRI, 4, interval)
    out += first[sos:-2]
    for index, strip in enumerate(strips[1:]):
        out += bytes((0xFF, _RST0 + index % 8))
        out += strip[_segments(strip)[1] : -2]
    out += bytes((0xFF, _EOI))
    return bytes(out)
