"""`EncodeSpec.from_header`: every rule an Encode header can break is checked there, before any tensor byte.

In process, on the engine's own dataclasses: what the servicer hands over once it has copied the protobuf.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import pytest

from ferry.errors import FerryError, InvalidArgument, ResourceExhausted
from ferry.services.encoder import choices
from ferry.services.encoder.audio import audio_samples
from ferry.services.encoder.choices import ChannelOrder, DataType, MediaFormat, OddSizePolicy, VideoCodecPreference
from ferry.services.encoder.request import (
    AudioOptions,
    AudioTrack,
    EncodeHeader,
    ImageOptions,
    TensorHeader,
    VideoOptions,
)
from ferry.services.encoder.spec import EncodeLimits, EncodeSpec, ImageSpec, VideoSpec, WavSpec
from ferry.services.storage.base import keyed_object_id
from ferry.v1 import common_pb2, encoder_pb2

LIMITS = EncodeLimits(max_bytes=1 << 20, max_pixels=10_000)
UINT8, FLOAT32 = DataType.UINT8, DataType.FLOAT32


def header(shape: tuple[int, ...], media: MediaFormat, options=None, *, dtype: int = UINT8, **fields) -> EncodeHeader:
    return EncodeHeader(TensorHeader(dtype, shape), media, options=options, **fields)


def video(shape: tuple[int, ...] = (4, 6, 8, 3), **options) -> EncodeHeader:
    return header(shape, MediaFormat.MP4, VideoOptions(**{"fps": 10.0, **options}))


def track(shape: tuple[int, ...], sample_rate: int = 16_000, dtype: int = FLOAT32) -> AudioTrack:
    return AudioTrack(TensorHeader(dtype, shape), sample_rate)


def refusal(encode_header: EncodeHeader, limits: EncodeLimits = LIMITS) -> tuple[type[FerryError], str]:
    with pytest.raises(FerryError) as refused:
        EncodeSpec.from_header(encode_header, limits)
    return type(refused.value), refused.value.reason


# -- the engine's numbers are the contract's ------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        choices.DataType,
        choices.MediaFormat,
        choices.ChannelOrder,
        choices.ValueRange,
        choices.VideoCodecPreference,
        choices.OddSizePolicy,
        choices.AudioSampleFormat,
    ],
    ids=lambda kind: kind.__name__,
)
def test_each_choice_names_and_numbers_what_the_contract_does(kind: type[IntEnum]) -> None:
    descriptor = (common_pb2 if kind is choices.DataType else encoder_pb2).DESCRIPTOR.enum_types_by_name[kind.__name__]
    prefix = descriptor.values[0].name.removesuffix("UNSPECIFIED")  # the contract prefixes each value with its enum
    contract = {value.name.removeprefix(prefix): value.number for value in descriptor.values}

    assert {member.name: member.value for member in kind} == contract


# -- every rule, before a byte ---------------------------------------------------------------------

REFUSED = {
    "an unknown format": (header((2, 2), 42), InvalidArgument, "BAD_FORMAT"),
    "no format": (header((2, 2), MediaFormat.UNSPECIFIED), InvalidArgument, "BAD_FORMAT"),
    "an unknown dtype": (header((2, 2), MediaFormat.PNG, dtype=99), InvalidArgument, "BAD_DTYPE"),
    "a six-dimensional tensor": (header((1,) * 6, MediaFormat.PNG), InvalidArgument, "BAD_SHAPE"),
    "a tensor over the cap": (header((1024, 1025), MediaFormat.PNG), ResourceExhausted, "TENSOR_TOO_LARGE"),
    "an unsafe file name": (header((2, 2), MediaFormat.PNG, file_name=".."), InvalidArgument, "BAD_FILE_NAME"),
    "an output key over 256 bytes": (
        header((2, 2), MediaFormat.PNG, output_key="k" * 257),
        InvalidArgument,
        "BAD_OUTPUT_KEY",
    ),
    "an unknown channel order": (
        header((2, 2), MediaFormat.PNG, channel_order=7),
        InvalidArgument,
        "BAD_CHANNEL_ORDER",
    ),
    # images
    "an animated png": (
        header((2, 4, 4, 3), MediaFormat.PNG, ImageOptions(animate=True)),
        InvalidArgument,
        "ANIMATION_UNSUPPORTED",
    ),
    "a jpeg quality of 101": (
        header((4, 4, 3), MediaFormat.JPEG, ImageOptions(quality=101)),
        InvalidArgument,
        "BAD_QUALITY",
    ),
    "an image of two channels": (header((5, 6, 2), MediaFormat.PNG), InvalidArgument, "BAD_SHAPE"),
    "channels first or last, unsaid": (header((3, 5, 4), MediaFormat.PNG), InvalidArgument, "AMBIGUOUS_LAYOUT"),
    "an image over the pixel cap": (header((101, 100), MediaFormat.PNG), ResourceExhausted, "TOO_MANY_PIXELS"),
    "an unknown value range": (
        header((4, 4), MediaFormat.PNG, ImageOptions(value_range=5)),
        InvalidArgument,
        "BAD_VALUE_RANGE",
    ),
    # video
    "a three-dimensional video": (video((6, 8, 3)), InvalidArgument, "BAD_SHAPE"),
    "frames over the pixel cap": (video((2, 101, 100, 3)), ResourceExhausted, "TOO_MANY_PIXELS"),
    "no frame rate": (video(fps=0.0), InvalidArgument, "BAD_FPS"),
    "an unknown preset": (video(preset="ludicrous"), InvalidArgument, "BAD_PRESET"),
    "a crf of 52": (video(crf=52), InvalidArgument, "BAD_CRF"),
    "an unknown codec preference": (video(codec_preference=9), InvalidArgument, "BAD_CODEC_PREFERENCE"),
    "odd frames where odd is refused": (
        video((2, 5, 7, 3), odd_size_policy=OddSizePolicy.REJECT),
        InvalidArgument,
        "ODD_SIZE",
    ),
    "a video value range unknown": (video(value_range=5), InvalidArgument, "BAD_VALUE_RANGE"),
    "an audio track of three channels": (video(audio_track=track((3, 100))), InvalidArgument, "BAD_CHANNELS"),
    "an audio track whose channels could lie either way": (
        video(audio_track=track((2, 2))),
        InvalidArgument,
        "AMBIGUOUS_LAYOUT",
    ),
    "an audio track without a sample rate": (
        video(audio_track=track((100,), sample_rate=0)),
        InvalidArgument,
        "MISSING_SAMPLE_RATE",
    ),
    "an audio track of an unknown dtype": (video(audio_track=track((100,), dtype=99)), InvalidArgument, "BAD_DTYPE"),
    # wav
    "a wav without audio options": (
        header((100,), MediaFormat.WAV, dtype=FLOAT32),
        InvalidArgument,
        "MISSING_SAMPLE_RATE",
    ),
    "a wav with image options": (
        header((100,), MediaFormat.WAV, ImageOptions(), dtype=FLOAT32),
        InvalidArgument,
        "MISSING_SAMPLE_RATE",
    ),
    "a wav sample rate of 0": (
        header((100,), MediaFormat.WAV, AudioOptions(), dtype=FLOAT32),
        InvalidArgument,
        "MISSING_SAMPLE_RATE",
    ),
    "a wav sample rate over the bound": (
        header((100,), MediaFormat.WAV, AudioOptions(sample_rate=800_000), dtype=FLOAT32),
        InvalidArgument,
        "BAD_SAMPLE_RATE",
    ),
    "an unknown sample format": (
        header((100,), MediaFormat.WAV, AudioOptions(16_000, sample_format=9), dtype=FLOAT32),
        InvalidArgument,
        "BAD_SAMPLE_FORMAT",
    ),
    "three-dimensional audio": (
        header((2, 2, 50), MediaFormat.WAV, AudioOptions(16_000)),
        InvalidArgument,
        "BAD_SHAPE",
    ),
    "audio of nine channels": (
        header((9, 100), MediaFormat.WAV, AudioOptions(16_000), channel_order=ChannelOrder.FIRST),
        InvalidArgument,
        "BAD_SHAPE",
    ),
}


@pytest.mark.parametrize(("encode_header", "error", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_header_breaking_any_rule_is_refused_by_the_spec_with_that_rules_reason(
    encode_header: EncodeHeader, error: type[FerryError], reason: str
) -> None:
    assert refusal(encode_header) == (error, reason)


def test_the_cap_counts_the_audio_track_with_the_frames() -> None:
    frames = (4, 8, 8, 3)  # 768 bytes
    limits = EncodeLimits(max_bytes=768 + 399, max_pixels=10_000)

    assert refusal(video(frames, audio_track=track((100,))), limits) == (ResourceExhausted, "TENSOR_TOO_LARGE")
    EncodeSpec.from_header(video(frames, audio_track=track((99,))), limits)  # 768 + 396 bytes fit


# -- what the spec says ------------------------------------------------------------------------------


def test_a_video_spec_reads_its_frame_size_from_the_channel_axis_it_was_told() -> None:
    spec = EncodeSpec.from_header(
        header((5, 3, 6, 8), MediaFormat.MP4, VideoOptions(fps=24.0, preset="fast"), channel_order=ChannelOrder.FIRST),
        LIMITS,
    )

    assert isinstance(spec.media, VideoSpec)
    assert (spec.media.frame_count, spec.media.height, spec.media.width) == (5, 6, 8)
    assert spec.media.frame_bytes == 3 * 6 * 8
    assert (spec.media.preset, spec.media.codec_preference) == ("fast", VideoCodecPreference.UNSPECIFIED)
    assert spec.tensor.size == 5 * 3 * 6 * 8


@pytest.mark.parametrize(
    ("shape", "order"),
    [
        ((100,), ChannelOrder.UNSPECIFIED),
        ((2, 100), ChannelOrder.UNSPECIFIED),
        ((100, 1), ChannelOrder.UNSPECIFIED),
        ((2, 2), ChannelOrder.FIRST),
        ((100, 2), ChannelOrder.LAST),
    ],
)
def test_a_video_tracks_channels_are_counted_by_the_rule_that_reads_its_samples(
    shape: tuple[int, ...], order: ChannelOrder
) -> None:
    frames = (2, 3, 6, 8) if order == ChannelOrder.FIRST else (2, 6, 8, 3)
    spec = EncodeSpec.from_header(
        header(frames, MediaFormat.MP4, VideoOptions(fps=10.0, audio_track=track(shape)), channel_order=order), LIMITS
    )
    samples = audio_samples(np.zeros(shape, np.float32), order)

    assert isinstance(spec.media, VideoSpec) and spec.media.audio is not None
    assert spec.media.audio.channels == samples.shape[0]


def test_an_image_spec_keeps_its_options_and_a_name_without_extension() -> None:
    options = ImageOptions(quality=80, animate=True, loop=2)
    spec = EncodeSpec.from_header(header((3, 6, 8, 3), MediaFormat.WEBP, options, file_name="dir/cat.png"), LIMITS)

    assert spec.media == ImageSpec("webp", choices.ValueRange.UNSPECIFIED, options)
    assert spec.base_name == "cat"


def test_a_wav_spec_and_an_unnamed_output() -> None:
    spec = EncodeSpec.from_header(header((2, 100), MediaFormat.WAV, AudioOptions(8000, 2), dtype=FLOAT32), LIMITS)

    assert spec.media == WavSpec(8000, choices.AudioSampleFormat.FLOAT32)
    assert spec.base_name == "output"


def test_an_output_key_names_one_object_id_per_file_and_none_without_it() -> None:
    keyed = EncodeSpec.from_header(header((2, 6, 8, 3), MediaFormat.PNG, output_key="salt/req/image"), LIMITS)
    unkeyed = EncodeSpec.from_header(header((2, 6, 8, 3), MediaFormat.PNG), LIMITS)

    assert keyed.object_id(0) == keyed_object_id("salt/req/image#0") != keyed.object_id(1)
    assert unkeyed.object_id(0) is None


def test_options_of_another_medium_leave_an_image_with_its_defaults() -> None:
    spec = EncodeSpec.from_header(header((6, 8, 3), MediaFormat.PNG, VideoOptions(fps=0.0)), LIMITS)

    assert spec.media == ImageSpec("png", choices.ValueRange.UNSPECIFIED, ImageOptions())
