"""Audio tensors become wav files that PyAV (and the standard library) read back sample for sample."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import av
import numpy as np
import pytest

from ferry.errors import InvalidArgument
from ferry.services.encoder.audio import AudioInfo, audio_samples, encode_wav
from ferry.services.encoder.tensors import tensor_from_bytes
from ferry.v1 import common_pb2, encoder_pb2

UNSPECIFIED = encoder_pb2.CHANNEL_ORDER_UNSPECIFIED
LAST = encoder_pb2.CHANNEL_ORDER_LAST
FIRST = encoder_pb2.CHANNEL_ORDER_FIRST
PCM16 = encoder_pb2.AUDIO_SAMPLE_FORMAT_PCM16
FLOAT32 = encoder_pb2.AUDIO_SAMPLE_FORMAT_FLOAT32


@dataclass(frozen=True)
class DecodedWav:
    codec: str
    sample_rate: int
    samples: np.ndarray  # (channels, samples), as the codec stores them (int16 or float32)


def decode(wav: bytes) -> DecodedWav:
    with av.open(io.BytesIO(wav), "r") as container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.layout.nb_channels
        blocks = []
        for frame in container.decode(stream):
            block = frame.to_ndarray()
            blocks.append(block if frame.format.is_planar else block.reshape(-1, channels).T)
        return DecodedWav(stream.codec_context.name, stream.codec_context.sample_rate, np.concatenate(blocks, axis=1))


def chirp(count: int, channels: int) -> np.ndarray:
    """float32 (channels, count) in [-0.9, 0.9], a different tone per channel."""
    t = np.arange(count) / 8000
    tones = [0.9 * np.sin(2 * np.pi * (200 + 150 * c) * t * (1 + t)) for c in range(channels)]
    return np.stack(tones).astype(np.float32)


# -- layouts --------------------------------------------------------------------------------


def test_a_one_dimensional_tensor_is_mono() -> None:
    sent = chirp(1000, 1)[0]
    assert audio_samples(sent, UNSPECIFIED).shape == (1, 1000)
    wav, info = encode_wav(audio_samples(sent, UNSPECIFIED), 8000, FLOAT32)
    assert info == AudioInfo(sample_rate=8000, channels=1, duration_seconds=0.125, sample_count=1000)
    assert np.array_equal(decode(wav).samples, sent[None])


@pytest.mark.parametrize("order", [FIRST, UNSPECIFIED])
def test_channels_first_is_channels_by_samples(order: int) -> None:
    sent = chirp(1000, 2)
    samples = audio_samples(sent, order)
    assert np.array_equal(samples, sent)
    assert np.array_equal(decode(encode_wav(samples, 8000, FLOAT32)[0]).samples, sent)


@pytest.mark.parametrize("order", [LAST, UNSPECIFIED])
def test_channels_last_is_samples_by_channels(order: int) -> None:
    sent = chirp(1000, 2)
    samples = audio_samples(np.ascontiguousarray(sent.T), order)
    assert samples.flags.c_contiguous
    assert np.array_equal(samples, sent)


def test_an_explicit_order_settles_a_shape_short_on_both_axes() -> None:
    tiny = np.zeros((3, 5), np.float32)
    with pytest.raises(InvalidArgument) as error:
        audio_samples(tiny, UNSPECIFIED)
    assert error.value.reason == "AMBIGUOUS_LAYOUT"
    assert "channel_order" in error.value.message
    assert audio_samples(tiny, FIRST).shape == (3, 5)
    assert audio_samples(tiny, LAST).shape == (5, 3)


@pytest.mark.parametrize(
    ("shape", "order"), [((9, 1000), FIRST), ((20, 30), UNSPECIFIED), ((2, 3, 100), UNSPECIFIED), ((), UNSPECIFIED)]
)
def test_more_than_eight_channels_or_other_ranks_are_refused(shape: tuple[int, ...], order: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        audio_samples(np.zeros(shape, np.float32), order)
    assert error.value.reason == "BAD_SHAPE"


@pytest.mark.parametrize("sample_format", [PCM16, FLOAT32])
def test_six_channels_decode_back_as_six(sample_format: int) -> None:
    sent = chirp(800, 6)
    decoded = decode(encode_wav(sent, 16000, sample_format)[0])
    assert decoded.samples.shape == (6, 800)
    assert decoded.sample_rate == 16000


# -- sample formats -------------------------------------------------------------------------


def test_pcm16_is_the_default_and_decodes_with_exact_count_and_rate() -> None:
    sent = chirp(44100, 2)
    wav, info = encode_wav(sent, 44100, encoder_pb2.AUDIO_SAMPLE_FORMAT_UNSPECIFIED)
    assert encode_wav(sent, 44100, PCM16)[0] == wav
    decoded = decode(wav)
    assert (decoded.codec, decoded.sample_rate, decoded.samples.shape) == ("pcm_s16le", 44100, (2, 44100))
    assert np.abs(decoded.samples / 32768 - sent).max() <= 1 / 32768
    assert info == AudioInfo(sample_rate=44100, channels=2, duration_seconds=1.0, sample_count=44100)
    with wave.open(io.BytesIO(wav)) as reader:  # the standard library reads it too
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate(), reader.getnframes()) == (
            2,
            2,
            44100,
            44100,
        )


def test_float32_is_ieee_float_and_decodes_bit_for_bit() -> None:
    sent = chirp(12345, 2)
    wav, info = encode_wav(sent, 48000, FLOAT32)
    decoded = decode(wav)
    assert (decoded.codec, decoded.sample_rate) == ("pcm_f32le", 48000)
    assert np.array_equal(decoded.samples, sent)
    assert info.sample_count == 12345
    assert wav[20:22] == (3).to_bytes(2, "little")  # WAVE_FORMAT_IEEE_FLOAT
    assert b"fact" in wav[:64]


def test_odd_sample_rates_are_kept() -> None:
    wav, info = encode_wav(chirp(100, 1), 22001, PCM16)
    assert decode(wav).sample_rate == 22001
    assert info.duration_seconds == pytest.approx(100 / 22001)


# -- integer and float inputs ---------------------------------------------------------------


def test_int16_input_comes_back_bit_for_bit_in_pcm16() -> None:
    sent = np.array([[-32768, -1, 0, 1, 12345, 32767]], np.int16)
    tensor = tensor_from_bytes(common_pb2.DATA_TYPE_INT16, [1, 6], sent.tobytes())
    wav, _ = encode_wav(audio_samples(tensor, FIRST), 8000, PCM16)
    assert decode(wav).samples.tolist() == sent.tolist()


def test_integer_pcm_is_scaled_to_minus_one_to_one() -> None:
    assert audio_samples(np.array([-32768, 0, 16384], np.int16), 0).tolist() == [[-1.0, 0.0, 0.5]]
    assert audio_samples(np.array([-(2**31), 0, 2**30], np.int32), 0).tolist() == [[-1.0, 0.0, 0.5]]
    assert audio_samples(np.array([0, 128, 192], np.uint8), 0).tolist() == [[-1.0, 0.0, 0.5]]  # 128 is silence


def test_floats_beyond_full_scale_are_clamped() -> None:
    samples = audio_samples(np.array([-3.0, -1.0, 0.25, 1.0, 7.5], np.float64), UNSPECIFIED)
    assert samples.dtype == np.float32
    assert samples.tolist() == [[-1.0, -1.0, 0.25, 1.0, 1.0]]
    assert decode(encode_wav(samples, 8000, PCM16)[0]).samples.tolist() == [[-32768, -32768, 8192, 32767, 32767]]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused(bad: float) -> None:
    with pytest.raises(InvalidArgument) as error:
        audio_samples(np.array([0.0, bad, 0.5], np.float32), UNSPECIFIED)
    assert error.value.reason == "NON_FINITE"


def test_bool_tensors_are_not_audio() -> None:
    with pytest.raises(InvalidArgument) as error:
        audio_samples(np.zeros(10, bool), UNSPECIFIED)
    assert error.value.reason == "BAD_DTYPE"


# -- refusals -------------------------------------------------------------------------------


def test_a_sample_rate_is_required() -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_wav(chirp(100, 1), 0, PCM16)
    assert error.value.reason == "MISSING_SAMPLE_RATE"


@pytest.mark.parametrize("rate", [-8000, 768_001])
def test_sample_rates_beyond_768_khz_are_refused(rate: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_wav(chirp(100, 1), rate, PCM16)
    assert error.value.reason == "BAD_SAMPLE_RATE"
    assert encode_wav(chirp(100, 1), 768_000, PCM16)[1].sample_rate == 768_000


def test_an_unknown_sample_format_is_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        encode_wav(chirp(100, 1), 8000, 9)
    assert error.value.reason == "BAD_SAMPLE_FORMAT"


def test_encode_wav_takes_only_planar_float32() -> None:
    for samples in (np.zeros((1, 10), np.int16), np.zeros(10, np.float32), np.zeros((9, 10), np.float32)):
        with pytest.raises(InvalidArgument) as error:
            encode_wav(samples, 8000, PCM16)
        assert error.value.reason == "BAD_SHAPE"
