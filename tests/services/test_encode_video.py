"""Frames stream into an H.264 mp4 that PyAV decodes back to the same count, rate and picture."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from ferry.errors import InvalidArgument
from ferry.services.encoder.video import AudioTrackFormat, Mp4Format, Mp4Writer, VideoInfo, video_frames
from ferry.v1 import encoder_pb2

FIRST = encoder_pb2.CHANNEL_ORDER_FIRST
CPU = encoder_pb2.VIDEO_CODEC_PREFERENCE_CPU
MINUS_ONE_TO_ONE = encoder_pb2.VALUE_RANGE_MINUS_ONE_TO_ONE
SCENE = Mp4Format(width=64, height=48, fps=30)  # moving_scene()'s frames at 30 fps, the writer's default settings


def moving_scene(count: int = 30, height: int = 48, width: int = 64) -> np.ndarray:
    """T×H×W×3 uint8: a sky gradient with a drifting ripple and a soft sun crossing it, like a slow pan."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        sky = np.stack(
            [0.25 + 0.5 * y / height, 0.45 + 0.3 * y / height + 0.1 * np.sin((x + 2 * t) / 20), 0.8 - 0.3 * y / height],
            -1,
        )
        sun = np.clip((12 - np.hypot(x - 8 - 1.5 * t, y - 22)) / 6, 0, 1)[..., None]
        frames.append(np.rint((sky * (1 - sun) + sun * np.array([0.9, 0.7, 0.35])) * 255).astype(np.uint8))
    return np.stack(frames)


@dataclass(frozen=True)
class Decoded:
    frames: np.ndarray  # T×H×W×3 rgb24
    fps: Fraction
    duration_seconds: float
    codec: str
    pix_fmt: str
    audio: np.ndarray | None  # (channels, samples) float32
    audio_rate: int | None


def decode(path: Path) -> Decoded:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        assert stream.average_rate is not None and stream.duration is not None and stream.time_base is not None
        video = (stream.average_rate, float(stream.duration * stream.time_base), stream.codec_context.name)
        pix_fmt = stream.codec_context.pix_fmt or ""
    audio, audio_rate = None, None
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio_rate = container.streams.audio[0].codec_context.sample_rate
            audio = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
    return Decoded(frames, video[0], video[1], video[2], pix_fmt, audio, audio_rate)


def encode(path: Path, frames: np.ndarray, **options: Any) -> VideoInfo:
    """Frames at 30 fps with libx264 unless told otherwise, so quality checks mean the same on a GPU host."""
    options.setdefault("codec_preference", CPU)
    writer = Mp4Writer(path, Mp4Format(width=frames.shape[2], height=frames.shape[1], fps=30, **options))
    writer.write_frames(frames)
    return writer.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def nearest_frame(frame: np.ndarray, frames: np.ndarray) -> int:
    errors = ((frames.astype(np.float64) - frame.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return int(np.argmin(errors))


def nvenc_opens_here() -> bool:
    try:
        context = av.CodecContext.create("h264_nvenc", "w")
        context.width, context.height, context.pix_fmt, context.time_base = 64, 48, "yuv420p", Fraction(1, 30)
        context.open()
    except Exception:  # noqa: BLE001
        return False
    return True


# -- what comes out -------------------------------------------------------------------------


def test_thirty_frames_decode_back_with_exact_count_fps_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    info = encode(path, moving_scene())
    back = decode(path)
    assert info == VideoInfo(
        width=64, height=48, fps=30.0, frame_count=30, duration_seconds=1.0, has_audio=False, codec="libx264"
    )
    assert len(back.frames) == 30
    assert back.fps == 30
    assert back.duration_seconds == pytest.approx(1.0)
    assert (back.codec, back.pix_fmt) == ("h264", "yuv420p")
    assert back.audio is None


def test_defaults_reach_35_db_psnr_on_smooth_moving_content(tmp_path: Path) -> None:
    sent = moving_scene()
    encode(tmp_path / "out.mp4", sent)
    assert psnr(decode(tmp_path / "out.mp4").frames, sent) >= 35  # measured: 36.6–36.7 dB at crf 23, medium


def test_lower_crf_means_higher_quality_and_a_larger_file(tmp_path: Path) -> None:
    sent = moving_scene()
    encode(tmp_path / "fine.mp4", sent, crf=12)
    encode(tmp_path / "coarse.mp4", sent, crf=40)
    assert (tmp_path / "fine.mp4").stat().st_size > (tmp_path / "coarse.mp4").stat().st_size
    assert psnr(decode(tmp_path / "fine.mp4").frames, sent) > psnr(decode(tmp_path / "coarse.mp4").frames, sent)


def test_fractional_frame_rates_are_kept_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ntsc.mp4"
    writer = Mp4Writer(path, Mp4Format(width=64, height=48, fps=30000 / 1001))
    writer.write_frames(moving_scene(10))
    info = writer.close()
    assert decode(path).fps == Fraction(30000, 1001)
    assert info.fps == pytest.approx(29.97, abs=0.001)
    assert info.duration_seconds == pytest.approx(10 * 1001 / 30000)


def test_the_moov_atom_comes_first_so_players_start_before_the_download_ends(tmp_path: Path) -> None:
    encode(tmp_path / "out.mp4", moving_scene(5))
    data = (tmp_path / "out.mp4").read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")


def test_several_write_frames_calls_make_the_same_video_as_one(tmp_path: Path) -> None:
    # libx264's threads make its bytes vary from run to run, so "the same" is: every frame, in order, as good.
    sent = moving_scene()
    writer = Mp4Writer(tmp_path / "chunks.mp4", Mp4Format(width=64, height=48, fps=30, codec_preference=CPU))
    for chunk in np.array_split(sent, [1, 8, 9, 20]):
        writer.write_frames(chunk)
    assert writer.close() == encode(tmp_path / "whole.mp4", sent)
    back = decode(tmp_path / "chunks.mp4").frames
    assert [nearest_frame(frame, sent) for frame in back] == list(range(30))
    assert psnr(back, sent) >= 35


def test_gray_and_rgba_frames_are_encoded_as_rgb(tmp_path: Path) -> None:
    sent = moving_scene(5)
    gray = sent[:, :, :, 1:2]
    encode(tmp_path / "gray.mp4", gray)
    back = decode(tmp_path / "gray.mp4").frames
    assert psnr(back, np.repeat(gray, 3, axis=3)) >= 35
    rgba = np.concatenate([sent, np.zeros_like(sent[:, :, :, :1])], axis=3)
    encode(tmp_path / "rgba.mp4", rgba)
    assert psnr(decode(tmp_path / "rgba.mp4").frames, sent) >= 35


# -- tensors into frames --------------------------------------------------------------------


def test_tchw_floats_make_the_same_frames_as_thwc_uint8(tmp_path: Path) -> None:
    sent = moving_scene(8)
    tchw = (sent.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1
    frames = video_frames(tchw, FIRST, MINUS_ONE_TO_ONE)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, sent)
    assert np.array_equal(video_frames(tchw, encoder_pb2.CHANNEL_ORDER_UNSPECIFIED, MINUS_ONE_TO_ONE), sent)
    encode(tmp_path / "from_tchw.mp4", frames)
    assert psnr(decode(tmp_path / "from_tchw.mp4").frames, sent) >= 35


def test_video_tensors_must_be_four_dimensional() -> None:
    for shape in [(48, 64, 3), (1, 2, 48, 64, 3)]:
        with pytest.raises(InvalidArgument) as error:
            video_frames(np.zeros(shape, np.uint8), 0, 0)
        assert error.value.reason == "BAD_SHAPE"


# -- odd sizes ------------------------------------------------------------------------------


def test_odd_sizes_are_padded_by_repeating_the_last_row_and_column(tmp_path: Path) -> None:
    sent = moving_scene(6, height=47, width=63)
    path = tmp_path / "odd.mp4"
    info = encode(path, sent)
    back = decode(path).frames
    assert (info.width, info.height) == (64, 48)  # the size as encoded
    assert back.shape == (6, 48, 64, 3)
    assert psnr(back[:, :47, :63], sent) >= 35
    assert psnr(back[:, 47, :63], sent[:, 46]) >= 35  # the padding row repeats the last one
    assert psnr(back[:, :47, 63], sent[:, :, 62]) >= 35


def test_odd_sizes_are_refused_when_the_policy_says_reject(tmp_path: Path) -> None:
    odd = Mp4Format(width=63, height=48, fps=30, odd_size_policy=encoder_pb2.ODD_SIZE_POLICY_REJECT)
    with pytest.raises(InvalidArgument) as error:
        Mp4Writer(tmp_path / "odd.mp4", odd)
    assert error.value.reason == "ODD_SIZE"
    assert not (tmp_path / "odd.mp4").exists()
    info = encode(tmp_path / "even.mp4", moving_scene(2), odd_size_policy=encoder_pb2.ODD_SIZE_POLICY_REJECT)
    assert (info.width, info.height) == (64, 48)


# -- audio ----------------------------------------------------------------------------------


AAC_FRAME = 1024  # samples per AAC frame
AAC_PRIMING = 1024  # silence FFmpeg's AAC encoder puts first; decoders hand it back


def aac_samples_match(decoded: int, sent: int) -> bool:
    """All of the audio came back, padded by at most one AAC frame to fill the last."""
    return 0 <= decoded - AAC_PRIMING - sent < AAC_FRAME


def tone(seconds: float, rate: int, channels: int, hertz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.repeat((0.5 * np.sin(2 * np.pi * hertz * t))[None], channels, axis=0).astype(np.float32)


def dominant_hertz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("channels", [1, 2])
def test_an_audio_track_is_muxed_in_and_decodes_to_the_tone_sent(tmp_path: Path, channels: int) -> None:
    path = tmp_path / "talkie.mp4"
    writer = Mp4Writer(path, SCENE, AudioTrackFormat(sample_rate=44100, channels=channels))
    writer.write_frames(moving_scene())
    sent = tone(1.0, 44100, channels)
    writer.write_audio(sent[:, :30000])  # in pieces, as the servicer may
    writer.write_audio(sent[:, 30000:])
    assert writer.close().has_audio
    back = decode(path)
    assert back.audio is not None and back.audio_rate == 44100
    assert back.audio.shape[0] == channels
    assert aac_samples_match(back.audio.shape[1], 44100)
    assert dominant_hertz(back.audio[0], 44100) == pytest.approx(440, abs=2)


def test_audio_at_a_rate_aac_cannot_carry_is_resampled_to_the_next_one_up(tmp_path: Path) -> None:
    path = tmp_path / "odd_rate.mp4"
    writer = Mp4Writer(path, SCENE, AudioTrackFormat(sample_rate=22000, channels=1))
    writer.write_frames(moving_scene())
    writer.write_audio(tone(1.0, 22000, 1))
    writer.close()
    back = decode(path)
    assert back.audio is not None and back.audio_rate == 22050
    assert aac_samples_match(back.audio.shape[1], 22050)
    assert dominant_hertz(back.audio[0], 22050) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    ("rate", "channels", "reason"),
    [
        (0, 1, "MISSING_SAMPLE_RATE"),
        (800_000, 1, "BAD_SAMPLE_RATE"),
        (44100, 3, "BAD_CHANNELS"),
        (44100, 0, "BAD_CHANNELS"),
    ],
)
def test_an_audio_track_needs_a_sample_rate_and_one_or_two_channels(
    tmp_path: Path, rate: int, channels: int, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        Mp4Writer(tmp_path / "a.mp4", SCENE, AudioTrackFormat(sample_rate=rate, channels=channels))
    assert error.value.reason == reason
    assert not (tmp_path / "a.mp4").exists()


def test_audio_without_a_declared_track_or_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    silent = Mp4Writer(tmp_path / "silent.mp4", SCENE)
    with pytest.raises(InvalidArgument) as error:
        silent.write_audio(tone(0.1, 44100, 1))
    assert error.value.reason == "NO_AUDIO_TRACK"
    silent.abort()
    stereo = Mp4Writer(tmp_path / "stereo.mp4", SCENE, AudioTrackFormat(sample_rate=44100, channels=2))
    with pytest.raises(InvalidArgument) as error:
        stereo.write_audio(tone(0.1, 44100, 1))
    assert error.value.reason == "BAD_SHAPE"
    stereo.abort()


# -- stopping and refusing ------------------------------------------------------------------


def test_abort_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "cancelled.mp4"
    writer = Mp4Writer(path, SCENE, AudioTrackFormat(sample_rate=48000, channels=2))
    writer.write_frames(moving_scene(10))
    writer.abort()
    writer.abort()  # the servicer's cleanup may run after the encoder's own
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_video_without_frames_is_refused_and_removed(tmp_path: Path) -> None:
    writer = Mp4Writer(tmp_path / "empty.mp4", SCENE)
    with pytest.raises(InvalidArgument) as error:
        writer.close()
    assert error.value.reason == "NO_FRAMES"
    assert not (tmp_path / "empty.mp4").exists()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"preset": "ludicrous"}, "BAD_PRESET"),
        ({"preset": "Medium"}, "BAD_PRESET"),
        ({"fps": 0}, "BAD_FPS"),
        ({"fps": -24}, "BAD_FPS"),
        ({"fps": 241}, "BAD_FPS"),
        ({"fps": float("nan")}, "BAD_FPS"),
        ({"fps": float("inf")}, "BAD_FPS"),
        ({"crf": 52}, "BAD_CRF"),
        ({"crf": -1}, "BAD_CRF"),
        ({"codec_preference": 9}, "BAD_CODEC_PREFERENCE"),
        ({"odd_size_policy": 9}, "BAD_ODD_SIZE_POLICY"),
        ({"width": 0}, "BAD_SHAPE"),
    ],
)
def test_bad_options_are_refused_before_a_file_is_made(tmp_path: Path, options: dict[str, object], reason: str) -> None:
    arguments: dict[str, Any] = {"width": 64, "height": 48, "fps": 30} | options
    with pytest.raises(InvalidArgument) as error:
        Mp4Writer(tmp_path / "bad.mp4", Mp4Format(**arguments))
    assert error.value.reason == reason
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("preset", ["ultrafast", "veryslow"])
def test_every_x264_preset_name_is_accepted(tmp_path: Path, preset: str) -> None:
    assert encode(tmp_path / "p.mp4", moving_scene(3), preset=preset).frame_count == 3


def test_frames_of_another_size_or_type_are_refused(tmp_path: Path) -> None:
    writer = Mp4Writer(tmp_path / "v.mp4", SCENE)
    with pytest.raises(InvalidArgument) as error:
        writer.write_frames(moving_scene(2, height=48, width=62))
    assert error.value.reason == "FRAME_SIZE_MISMATCH"
    with pytest.raises(InvalidArgument) as error:
        writer.write_frames(moving_scene(2).astype(np.float32))
    assert error.value.reason == "BAD_SHAPE"
    writer.abort()


# -- codec choice and threads ---------------------------------------------------------------


def test_the_cpu_preference_always_uses_libx264(tmp_path: Path) -> None:
    info = encode(tmp_path / "cpu.mp4", moving_scene(3), codec_preference=CPU)
    assert info.codec == "libx264"


@pytest.mark.parametrize(
    "preference", [encoder_pb2.VIDEO_CODEC_PREFERENCE_GPU_IF_AVAILABLE, encoder_pb2.VIDEO_CODEC_PREFERENCE_UNSPECIFIED]
)
def test_the_gpu_is_used_where_nvenc_opens_and_libx264_everywhere_else(tmp_path: Path, preference: int) -> None:
    path = tmp_path / "gpu.mp4"
    info = encode(path, moving_scene(), codec_preference=preference)
    assert info.codec == ("h264_nvenc" if nvenc_opens_here() else "libx264")
    assert len(decode(path).frames) == 30


def test_writers_run_side_by_side_on_worker_threads(tmp_path: Path) -> None:
    scenes = [moving_scene(), moving_scene()[::-1].copy(), moving_scene(30, 32, 32)]
    with ThreadPoolExecutor(3) as pool:
        infos = list(pool.map(lambda job: encode(tmp_path / f"{job[0]}.mp4", job[1]), enumerate(scenes)))
    for index, (info, sent) in enumerate(zip(infos, scenes, strict=True)):
        assert info.frame_count == 30
        assert psnr(decode(tmp_path / f"{index}.mp4").frames, sent) >= 35
