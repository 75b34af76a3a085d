"""Raw tensor bytes into numpy arrays, and arrays into image pixels.

Everything the encoder receives is a `TensorHeader` (dtype, shape) followed by
raw C-order bytes. This module is the one place that trusts neither: it checks
the byte count against the shape, refuses layouts it would have to guess, and
turns any supported element type into the 8- or 16-bit pixels encoders take.

Bytes are read little-endian: that is the native order of every machine torch
and numpy run inference on, so clients send `tensor.numpy().tobytes()` as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy as np
import numpy.typing as npt

from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.services.config import EncoderConfig
from ferry.services.encoder.choices import ChannelOrder, DataType, ValueRange, choice

ITEMSIZE: dict[int, int] = {
    DataType.UINT8: 1,
    DataType.UINT16: 2,
    DataType.INT16: 2,
    DataType.INT32: 4,
    DataType.FLOAT16: 2,
    DataType.BFLOAT16: 2,
    DataType.FLOAT32: 4,
    DataType.FLOAT64: 8,
    DataType.BOOL: 1,
    DataType.INT8: 1,
    DataType.INT64: 8,
}

# bfloat16 has no numpy dtype: its bytes are read as uint16 and widened by `tensor_from_bytes`.
_WIRE_DTYPES: dict[int, np.dtype] = {
    DataType.UINT8: np.dtype("u1"),
    DataType.UINT16: np.dtype("<u2"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.FLOAT16: np.dtype("<f2"),
    DataType.BFLOAT16: np.dtype("<u2"),
    DataType.FLOAT32: np.dtype("<f4"),
    DataType.FLOAT64: np.dtype("<f8"),
    DataType.BOOL: np.dtype("?"),
    DataType.INT8: np.dtype("i1"),
    DataType.INT64: np.dtype("<i8"),
}

MAX_DIMS = 5
# Far beyond any medium this service writes, and far from overflowing numpy's
# index arithmetic whatever a uint64 shape in a header claims.
MAX_TENSOR_BYTES = 1 << 40
DEFAULT_MAX_PIXELS = EncoderConfig.max_pixels  # the config field's default: one number for both
IMAGE_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA


def numpy_dtype(dtype: int) -> np.dtype:
    """The dtype the tensor's bytes are read as (uint16 for bfloat16, which numpy lacks)."""
    try:
        return _WIRE_DTYPES[dtype]
    except KeyError:
        raise InvalidArgument(f"unknown or unspecified tensor dtype {dtype}", reason="BAD_DTYPE") from None


def expected_bytes(dtype: int, shape: Sequence[int]) -> int:
    itemsize = numpy_dtype(dtype).itemsize
    if not 1 <= len(shape) <= MAX_DIMS:
        raise InvalidArgument(f"tensor shape {list(shape)} must have 1 to {MAX_DIMS} dimensions", reason="BAD_SHAPE")
    if any(dim <= 0 for dim in shape):
        raise InvalidArgument(f"tensor shape {list(shape)} has an empty dimension", reason="BAD_SHAPE")
    size = prod(shape) * itemsize
    if size > MAX_TENSOR_BYTES:
        raise InvalidArgument(f"tensor shape {list(shape)} would take {size} bytes", reason="BAD_SHAPE")
    return size


def tensor_from_bytes(
    dtype: int, shape: Sequence[int], data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]
) -> np.ndarray:
    """The tensor, C order; a read-only view of `data` for every dtype but bfloat16 (widened to float32)."""
    expected = expected_bytes(dtype, shape)
    if len(data) != expected:
        raise InvalidArgument(
            f"tensor of shape {list(shape)} needs {expected} bytes, got {len(data)}",
            reason="TENSOR_SIZE_MISMATCH",
        )
    array = np.frombuffer(data, dtype=numpy_dtype(dtype)).reshape(tuple(shape))
    if dtype == DataType.BFLOAT16:
        # bfloat16 is the top half of a float32: shift the bits back into place.
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


class ArrivingTensor:
    """A tensor's bytes landing in one buffer sized from its header: no regrowing, no copy when complete.

    Too many bytes fail as they arrive; too few when the tensor is asked for.
    """

    def __init__(self, dtype: int, shape: Sequence[int]) -> None:
        self.dtype = dtype
        self.shape = list(shape)
        self.expected = expected_bytes(dtype, shape)
        self.buffer = np.empty(self.expected, dtype=np.uint8)
        self.received = 0
        self._row_bytes = self.expected // self.shape[0]

    @property
    def rows_received(self) -> int:
        """How many whole rows (entries of the first axis) have arrived."""
        return self.received // self._row_bytes

    def add(self, chunk: bytes) -> None:
        end = self.received + len(chunk)
        if end > self.expected:
            raise InvalidArgument(
                f"tensor of shape {self.shape} needs {self.expected} bytes, more arrived", reason="TENSOR_SIZE_MISMATCH"
            )
        self.buffer[self.received : end] = np.frombuffer(chunk, dtype=np.uint8)
        self.received = end

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` of the first axis, once they have arrived (a view, widened for bfloat16)."""
        rows = self.buffer[start * self._row_bytes : stop * self._row_bytes]
        return tensor_from_bytes(self.dtype, [stop - start, *self.shape[1:]], rows)

    def tensor(self) -> np.ndarray:
        return tensor_from_bytes(self.dtype, self.shape, self.buffer.data[: self.received])


def to_uint8(array: np.ndarray, value_range: int) -> np.ndarray:
    """8-bit pixels, same shape: see `to_image_pixels`."""
    return to_image_pixels(array, value_range, keep_16_bit=False)


def to_image_pixels(array: np.ndarray, value_range: int, keep_16_bit: bool) -> np.ndarray:
    """Pixels an image encoder takes: uint8, or uint16 when the input is uint16 and `keep_16_bit`.

    uint8 passes through; uint16 is kept or scaled to 8 bits; bool is a 0/255
    mask; floats map `value_range` ([0, 1] unless MINUS_ONE_TO_ONE) onto 0..255,
    clamped, and must be finite. Other integers have no agreed pixel scale, so
    they pass only when every value already lies in 0..255.
    """
    value_range = choice(ValueRange, value_range, field="value_range", reason="BAD_VALUE_RANGE")
    kind = array.dtype
    if kind == np.uint8:
        return array
    if kind == np.uint16:
        if keep_16_bit:
            return array
        # round(x * 255 / 65535) in integers: exact, and 257 * v maps back to v.
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if kind == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(kind, np.floating):
        return _floats_to_uint8(array, value_range)
    if np.issubdtype(kind, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise InvalidArgument(
                f"{kind.name} pixels must lie in 0..255 (got {low}..{high}); send uint8, uint16 or floats",
                reason="VALUE_OUT_OF_RANGE",
            )
        return array.astype(np.uint8)
    raise InvalidArgument(f"{kind.name} tensors cannot be pixels", reason="BAD_DTYPE")


def image_batch(array: np.ndarray, channel_order: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An N×H×W×C view (C in 1, 3, 4) of an HW, HWC, CHW, NHWC or NCHW array.

    A 3-D array is always one image: a batch of grayscale images carries its
    channel axis (N×H×W×1), else (4, H, W) could be four images or one RGBA.
    """
    channel_order = choice(ChannelOrder, channel_order, field="channel_order", reason="BAD_CHANNEL_ORDER")
    if array.ndim == 2:
        batch = array[None, :, :, None]
    elif array.ndim in (3, 4):
        batch = array[None] if array.ndim == 3 else array
        if channels_first(batch.shape, channel_order):
            batch = batch.transpose(0, 2, 3, 1)
    else:
        raise InvalidArgument(
            f"image tensor shape {list(array.shape)} must be HW, HWC, CHW, NHWC or NCHW", reason="BAD_SHAPE"
        )
    count, height, width, channels = batch.shape
    if count * height * width == 0:
        raise InvalidArgument(f"image tensor shape {list(array.shape)} has an empty dimension", reason="BAD_SHAPE")
    if channels not in IMAGE_CHANNELS:
        raise InvalidArgument(
            f"image tensor shape {list(array.shape)} has {channels} channels; images have 1, 3 or 4",
            reason="BAD_SHAPE",
        )
    if height * width > max_pixels:
        raise ResourceExhausted(
            f"{width}×{height} is {height * width} pixels, over the limit of {max_pixels}",
            reason="TOO_MANY_PIXELS",
        )
    return batch


def shape_only(shape: Sequence[int]) -> np.ndarray:
    """An array of `shape` that takes no memory: enough for the layout checks, which read only the shape."""
    return np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(shape))


def channels_first(shape: tuple[int, ...], channel_order: int) -> bool:
    """For an N×?×?×? shape: is axis 1 (not axis 3) the channel axis?"""
    if channel_order == ChannelOrder.FIRST:
        return True
    if channel_order == ChannelOrder.LAST:
        return False
    first, last = shape[1] in IMAGE_CHANNELS, shape[3] in IMAGE_CHANNELS
    if first and last:
        raise InvalidArgument(
            f"shape {list(shape[1:])} could hold its channels first or last; set channel_order",
            reason="AMBIGUOUS_LAYOUT",
        )
    if not (first or last):
        raise InvalidArgument(
            f"shape {list(shape[1:])} has no channel axis of 1, 3 or 4 first or last", reason="BAD_SHAPE"
        )
    return first


def _floats_to_uint8(array: np.ndarray, value_range: int) -> np.ndarray:
    # float16 would lose the .5 steps of 0..255 during the arithmetic; float64 keeps its precision.
    values: np.ndarray = array.astype(np.float64 if array.dtype == np.float64 else np.float32)
    if not np.isfinite(values).all():
        raise InvalidArgument("tensor holds NaN or infinite values", reason="NON_FINITE")
    if value_range == ValueRange.MINUS_ONE_TO_ONE:
        values += 1
        values *= 127.5
    else:
        values *= 255
    np.clip(values, 0, 255, out=values)
    np.rint(values, out=values)
    return values.astype(np.uint8)
