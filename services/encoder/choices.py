"""The encoder's enumerated choices, numbered as the contract numbers them.

The engine reads these, never the generated `*_pb2` enums, so it stays free of
the wire format; the numbers are the contract's so a header's values pass
through unchanged (tests/services/test_encode_spec.py checks the two agree).
A number no member has is refused by `choice`, with the reason the rule names.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

from ferry.errors import InvalidArgument


class DataType(IntEnum):
    UNSPECIFIED = 0
    UINT8 = 1
    UINT16 = 2
    INT16 = 3
    INT32 = 4
    FLOAT16 = 5
    BFLOAT16 = 6
    FLOAT32 = 7
    FLOAT64 = 8
    BOOL = 9
    INT8 = 10
    INT64 = 11


class MediaFormat(IntEnum):
    UNSPECIFIED = 0
    PNG = 1
    JPEG = 2
    WEBP = 3
    GIF = 4
    MP4 = 5
    WAV = 6


class ChannelOrder(IntEnum):
    UNSPECIFIED = 0  # told from the shape where it can be, refused where it cannot
    LAST = 1
    FIRST = 2


class ValueRange(IntEnum):
    UNSPECIFIED = 0  # floats in [0, 1]
    ZERO_TO_ONE = 1
    MINUS_ONE_TO_ONE = 2


class VideoCodecPreference(IntEnum):
    UNSPECIFIED = 0  # as GPU_IF_AVAILABLE
    CPU = 1
    GPU_IF_AVAILABLE = 2


class OddSizePolicy(IntEnum):
    UNSPECIFIED = 0  # as PAD
    PAD = 1
    REJECT = 2


class AudioSampleFormat(IntEnum):
    UNSPECIFIED = 0  # as PCM16
    PCM16 = 1
    FLOAT32 = 2


Choice = TypeVar("Choice", bound=IntEnum)


def choice(kind: type[Choice], value: int, *, field: str, reason: str) -> Choice:
    """`value` as a member of `kind`; INVALID_ARGUMENT with `reason` when no member has that number."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidArgument(f"unknown {field} {value}", reason=reason) from None
