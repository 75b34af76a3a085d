"""Audio tensors into planar float samples, and samples into wav files.

The wav header is written here rather than by a muxer: it is a few fixed
fields, and writing it ourselves gives exactly the layout players expect
(WAVE_FORMAT_IEEE_FLOAT with its `fact` chunk for float32,
WAVE_FORMAT_EXTENSIBLE beyond two channels) with no temporary file.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.services.encoder.choices import AudioSampleFormat, ChannelOrder, choice

MAX_CHANNELS = 8  # 7.1; the channel axis is told from the sample axis by this bound
MAX_SAMPLE_RATE = 768_000
# Integer PCM in, floats out: (value - offset) / scale. uint8 is 8-bit wav's convention (silence at 128).
_PCM_SCALES: dict[type[np.integer], tuple[int, int]] = {
    np.uint8: (128, 128),
    np.int8: (0, 128),
    np.uint16: (32768, 32768),
    np.int16: (0, 32768),
    np.int32: (0, 2**31),
    np.int64: (0, 2**63),
}
_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_KSDATAFORMAT_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # after the 2-byte format tag
_MAX_RIFF_BYTES = 0xFFFFFFFF  # RIFF sizes are 32-bit


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    duration_seconds: float
    sample_count: int  # per channel


@dataclass(frozen=True)
class AudioLayout:
    channels: int
    samples: int  # per channel
    channels_first: bool


def audio_layout(shape: Sequence[int], channel_order: int) -> AudioLayout:
    """Where an audio tensor of `shape` holds its channels: the one channel rule, for wav and a video's track alike.

    (samples,) is mono, else FIRST and LAST name the channel axis; UNSPECIFIED
    takes the axis of at most `MAX_CHANNELS` as channels, and refuses when both
    axes are that short. 1 to `MAX_CHANNELS` channels and some samples.
    """
    if len(shape) == 1:
        channels, count, first = 1, shape[0], True
    elif len(shape) == 2:
        first = _channels_first(shape, channel_order)
        channels, count = (shape[0], shape[1]) if first else (shape[1], shape[0])
    else:
        raise InvalidArgument(
            f"audio tensor shape {list(shape)} must be (samples,), (channels, samples) or (samples, channels)",
            reason="BAD_SHAPE",
        )
    if not 1 <= channels <= MAX_CHANNELS or count == 0:
        raise InvalidArgument(
            f"audio of {channels} channels × {count} samples: need 1 to {MAX_CHANNELS} channels and some samples",
            reason="BAD_SHAPE",
        )
    return AudioLayout(channels, count, first)


def audio_samples(array: np.ndarray, channel_order: int) -> np.ndarray:
    """float32 (channels, samples) in [-1, 1] from a tensor laid out as `audio_layout` reads it."""
    layout = audio_layout(array.shape, channel_order)
    planar = array.reshape(1, -1) if array.ndim == 1 else array if layout.channels_first else array.T
    return np.ascontiguousarray(_as_float(planar))


def encode_wav(samples: np.ndarray, sample_rate: int, sample_format: int) -> tuple[bytes, AudioInfo]:
    """A wav file of float32 (channels, samples): 16-bit PCM unless FLOAT32 is asked for."""
    if samples.dtype != np.float32 or samples.ndim != 2 or not 1 <= samples.shape[0] <= MAX_CHANNELS:
        raise InvalidArgument(
            f"wav samples must be float32 (channels, samples), got {samples.dtype} {list(samples.shape)}",
            reason="BAD_SHAPE",
        )
    check_wav_options(sample_rate, sample_format)
    channels, count = samples.shape
    interleaved = samples.T
    if sample_format == AudioSampleFormat.FLOAT32:
        data = np.ascontiguousarray(interleaved, dtype="<f4")
        format_tag = _WAVE_FORMAT_IEEE_FLOAT
    else:  # PCM16, the default
        # × 32768 (not 32767) so int16 input comes back bit for bit; +1.0 clips to 32767.
        data = np.clip(np.rint(interleaved * 32768), -32768, 32767).astype("<i2", order="C")
        format_tag = _WAVE_FORMAT_PCM
    header = _wav_header(format_tag, channels, sample_rate, data.itemsize * 8, count, data.nbytes)
    info = AudioInfo(
        sample_rate=sample_rate, channels=channels, duration_seconds=count / sample_rate, sample_count=count
    )
    return b"".join((header, data.data)), info


def check_sample_rate(sample_rate: int) -> None:
    """The bound on any audio this service writes, a wav or a video's track: 1 to `MAX_SAMPLE_RATE` Hz."""
    if not 0 < sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidArgument(f"sample rate {sample_rate} is outside 1..{MAX_SAMPLE_RATE}", reason="BAD_SAMPLE_RATE")


def check_wav_options(sample_rate: int, sample_format: int) -> None:
    """A wav's rules, which read no sample: a request is checked against them before its tensor arrives."""
    if sample_rate == 0:
        raise InvalidArgument("wav needs a sample rate", reason="MISSING_SAMPLE_RATE")
    check_sample_rate(sample_rate)
    choice(AudioSampleFormat, sample_format, field="sample_format", reason="BAD_SAMPLE_FORMAT")


def _channels_first(shape: Sequence[int], channel_order: int) -> bool:
    order = choice(ChannelOrder, channel_order, field="channel_order", reason="BAD_CHANNEL_ORDER")
    if order == ChannelOrder.FIRST:
        return True
    if order == ChannelOrder.LAST:
        return False
    first, last = shape[0] <= MAX_CHANNELS, shape[1] <= MAX_CHANNELS
    if first and last:
        raise InvalidArgument(
            f"audio shape {list(shape)} could hold its channels on either axis; set channel_order",
            reason="AMBIGUOUS_LAYOUT",
        )
    return first  # neither short enough: channels last, which `audio_samples` then rejects by count


def _as_float(planar: np.ndarray) -> np.ndarray:
    kind = planar.dtype
    if np.issubdtype(kind, np.floating):
        values = planar.astype(np.float32)
        if not np.isfinite(values).all():
            raise InvalidArgument("audio holds NaN or infinite samples", reason="NON_FINITE")
        return np.clip(values, -1.0, 1.0, out=values)
    if kind.type in _PCM_SCALES:
        offset, scale = _PCM_SCALES[kind.type]
        # float32 cannot hold 32- or 64-bit PCM exactly before the scaling.
        wide: np.ndarray = planar.astype(np.float64) if kind.itemsize >= 4 else planar.astype(np.float32)
        return ((wide - offset) / scale).astype(np.float32)
    raise InvalidArgument(f"{kind.name} tensors cannot be audio samples", reason="BAD_DTYPE")


def _wav_header(format_tag: int, channels: int, sample_rate: int, bits: int, count: int, data_bytes: int) -> bytes:
    block_align = channels * bits // 8
    common = struct.pack("<HIIHH", channels, sample_rate, sample_rate * block_align, block_align, bits)
    if channels > 2:  # the spec asks for EXTENSIBLE beyond stereo; channel mask 0: no speaker positions claimed
        subformat = struct.pack("<H", format_tag) + _KSDATAFORMAT_GUID_TAIL
        fmt = struct.pack("<H", _WAVE_FORMAT_EXTENSIBLE) + common + struct.pack("<HHI", 22, bits, 0) + subformat
    elif format_tag == _WAVE_FORMAT_PCM:
        fmt = struct.pack("<H", format_tag) + common
    else:
        fmt = struct.pack("<H", format_tag) + common + struct.pack("<H", 0)  # cbSize: non-PCM fmt chunks carry it
    chunks = _chunk(b"fmt ", fmt)
    if format_tag != _WAVE_FORMAT_PCM:
        chunks += _chunk(b"fact", struct.pack("<I", count))  # required for every non-PCM format
    riff_size = 4 + len(chunks) + 8 + data_bytes
    if riff_size > _MAX_RIFF_BYTES:
        raise ResourceExhausted(f"{data_bytes} bytes of audio do not fit a wav file (4 GiB)", reason="WAV_TOO_LARGE")
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks + b"data" + struct.pack("<I", data_bytes)


def _chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body
