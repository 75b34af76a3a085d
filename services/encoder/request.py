"""What an Encode stream carries, as the engine receives it: plain values, not yet checked.

The servicer copies each protobuf message into these field for field and
judges nothing; `EncodeSpec.from_header` (spec.py) is where a header is checked.
Enumerated fields stay plain numbers here, so a number the contract does not
define reaches the spec and is refused there with its rule's reason.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorHeader:
    dtype: int  # a choices.DataType number
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ImageOptions:
    quality: int | None = None  # None: the format's default
    lossless: bool = False
    png_compress_level: int | None = None
    value_range: int = 0
    animate: bool = False
    frame_duration_ms: int = 0
    loop: int = 0


@dataclass(frozen=True)
class AudioTrack:
    tensor: TensorHeader
    sample_rate: int


@dataclass(frozen=True)
class VideoOptions:
    fps: float = 0.0
    crf: int | None = None  # None: x264's default
    preset: str = ""
    codec_preference: int = 0
    odd_size_policy: int = 0
    value_range: int = 0
    audio_track: AudioTrack | None = None


@dataclass(frozen=True)
class AudioOptions:
    sample_rate: int = 0
    sample_format: int = 0


@dataclass(frozen=True)
class EncodeHeader:
    tensor: TensorHeader
    format: int  # a choices.MediaFormat number
    channel_order: int = 0
    options: ImageOptions | VideoOptions | AudioOptions | None = None
    file_name: str = ""
    output_key: str = ""  # "": fresh object ids; else ids derived from it, replacing what a same-key encode stored


@dataclass(frozen=True)
class TensorChunk:
    """The next raw bytes of the tensor (C order)."""

    data: bytes


@dataclass(frozen=True)
class AudioChunk:
    """The next raw bytes of a video's audio track."""

    data: bytes


Chunk = TensorChunk | AudioChunk
