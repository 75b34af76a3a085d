"""`encode_tensor`'s keywords are one typed group (`EncodeOptions`): each becomes its header field, with its default."""

from __future__ import annotations

import numpy as np
import pytest

from ferry.uploads import EncodeOptions, build_encode
from ferry.v1 import encoder_pb2

PIXELS = np.zeros((4, 6, 3), np.uint8)


def test_a_misspelt_keyword_is_a_type_error_naming_it_as_with_any_named_parameter() -> None:
    with pytest.raises(TypeError, match=r"encode_tensor\(\) got an unexpected keyword argument 'qualty'"):
        build_encode(PIXELS, "jpeg", qualty=80)  # type: ignore[call-arg]


def test_options_left_out_take_their_defaults() -> None:
    image, _, _ = build_encode(PIXELS, "png")
    video, _, _ = build_encode(PIXELS[None], "mp4")
    wav, _, _ = build_encode(np.zeros(8, np.float32), "wav", sample_rate=8000)

    assert (image.file_name, image.output_key, image.channel_order) == ("", "", encoder_pb2.CHANNEL_ORDER_UNSPECIFIED)
    assert image.image == encoder_pb2.ImageOptions()  # no quality, no compress level: the encoder's own defaults
    assert (video.video.fps, video.video.preset, video.video.HasField("crf")) == (24.0, "", False)
    assert video.video.codec_preference == encoder_pb2.VIDEO_CODEC_PREFERENCE_GPU_IF_AVAILABLE
    assert not video.video.HasField("audio_track")
    assert (wav.audio.sample_rate, wav.audio.sample_format) == (8000, encoder_pb2.AUDIO_SAMPLE_FORMAT_PCM16)


def test_every_option_given_reaches_its_header_field() -> None:
    webp: EncodeOptions = {
        "file_name": "cat.webp",
        "channel_order": "last",
        "value_range": "-1,1",
        "quality": 70,
        "lossless": True,
        "animate": True,
        "frame_duration_ms": 40,
        "loop": 2,
        "output_key": "request/field",
    }
    header, _, _ = build_encode(PIXELS[None], "webp", **webp)
    png, _, _ = build_encode(PIXELS, "png", png_compress_level=9)
    samples = np.zeros((2, 100), np.float32)
    mp4, _, audio = build_encode(
        PIXELS[None], "mp4", fps=30, crf=18, preset="fast", allow_gpu=False, audio=(samples, 16_000)
    )

    assert (header.file_name, header.output_key) == ("cat.webp", "request/field")
    assert header.channel_order == encoder_pb2.CHANNEL_ORDER_LAST
    assert header.image == encoder_pb2.ImageOptions(
        quality=70,
        lossless=True,
        value_range=encoder_pb2.VALUE_RANGE_MINUS_ONE_TO_ONE,
        animate=True,
        frame_duration_ms=40,
        loop=2,
    )
    assert png.image.png_compress_level == 9
    assert (mp4.video.fps, mp4.video.crf, mp4.video.preset) == (30.0, 18, "fast")
    assert mp4.video.codec_preference == encoder_pb2.VIDEO_CODEC_PREFERENCE_CPU
    assert audio is not None and mp4.video.audio_track == encoder_pb2.AudioTrack(
        tensor=audio.header, sample_rate=16_000
    )
