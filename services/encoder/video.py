"""Frames into an H.264 mp4, chunk by chunk: the video never sits whole in memory.

`Mp4Writer` is fed from a worker thread (the servicer keeps encoding off the
event loop), one call at a time; it holds no global state, so any number of
writers can run side by side.

Codec: h264_nvenc when the caller allows the GPU and NVENC opens at this size,
else libx264. The only reliable test for "CUDA device present" without torch is
opening an NVENC context: it fails in well under a millisecond where there is no
GPU, no driver, or a size NVENC refuses, and every such failure falls back to
libx264 (the path CI exercises: it has no GPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ferry.errors import InvalidArgument
from ferry.services.encoder.audio import check_sample_rate
from ferry.services.encoder.choices import OddSizePolicy, VideoCodecPreference, choice
from ferry.services.encoder.tensors import DEFAULT_MAX_PIXELS, IMAGE_CHANNELS, image_batch, to_uint8

logger = logging.getLogger(__name__)

CRF = 23  # libx264's own default; ≥ 35 dB PSNR on smooth content (tests/services/test_encode_video.py)
PRESET = "medium"
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
# NVENC names its speed/quality steps p1 (fastest) … p7 (best); matched to x264's by intent.
NVENC_PRESETS = dict(zip(X264_PRESETS, ("p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7", "p7"), strict=True))
MAX_FPS = 240.0
MAX_AUDIO_CHANNELS = 2  # mono or stereo: downmix surround before sending it
# The rates AAC can carry; any other is resampled to the next one up (or the highest).
AAC_SAMPLE_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_AUDIO_BLOCK = 1 << 16  # samples handed to the encoder per call, so its queues stay small
_BT601 = 6  # AVCOL_SPC/PRI/TRC_SMPTE170M: the matrix swscale converts RGB with, tagged so players agree
_TV_RANGE = 1  # AVCOL_RANGE_MPEG: 16..235, what yuv420p H.264 players expect


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as encoded: an odd size padded to even reports the padded size
    height: int
    fps: float
    frame_count: int
    duration_seconds: float
    has_audio: bool
    codec: str  # the encoder used: "libx264" or "h264_nvenc"


def video_frames(
    array: np.ndarray, channel_order: int, value_range: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A THWC or TCHW chunk of any supported dtype as T×H×W×C uint8 (C in 1, 3, 4)."""
    if array.ndim != 4:
        raise InvalidArgument(f"video tensor shape {list(array.shape)} must be THWC or TCHW", reason="BAD_SHAPE")
    return np.ascontiguousarray(to_uint8(image_batch(array, channel_order, max_pixels=max_pixels), value_range))


@dataclass(frozen=True)
class Mp4Format:
    """What an mp4 is made as: its frames' size and rate, and the encoder's settings.

    None and "" are the writer's defaults (CRF, PRESET); the numbers are the
    contract's VideoCodecPreference and OddSizePolicy.
    """

    width: int
    height: int
    fps: float
    crf: int | None = None
    preset: str = ""
    codec_preference: int = 0
    odd_size_policy: int = 0


@dataclass(frozen=True)
class AudioTrackFormat:
    """A video's audio track: AAC at `sample_rate` (or the next rate AAC carries), mono or stereo."""

    sample_rate: int
    channels: int


class Mp4Writer:
    """An mp4 at `path` (H.264 yuv420p, optional AAC track), written as frames arrive.

    Odd sizes cannot be yuv420p: PAD (the default) repeats the last row or
    column, REJECT refuses them. Audio is optional: give its format to add the
    track, then `write_audio` any time before `close`.
    """

    def __init__(self, path: Path, mp4: Mp4Format, audio: AudioTrackFormat | None = None) -> None:
        check_video_options(mp4)
        if audio is not None:
            check_audio_options(audio)
        crf = CRF if mp4.crf is None else mp4.crf
        preset = mp4.preset or PRESET
        width, height = mp4.width, mp4.height
        self._path = path
        self._width, self._height = width, height
        self._encoded_width, self._encoded_height = width + width % 2, height + height % 2
        self._rate = Fraction(mp4.fps).limit_denominator(1001)  # 29.97 → 2997/100, 30000/1001 stays exact
        self._frame_count = 0
        self._audio_rate = 0 if audio is None else audio.sample_rate
        self._audio_channels = 0 if audio is None else audio.channels
        self._audio_layout = "mono" if self._audio_channels == 1 else "stereo"
        self._audio_samples = 0
        self._closed = False
        nvenc_options = _codec_options("h264_nvenc", crf, preset)
        self._codec = _video_codec(
            mp4.codec_preference, self._encoded_width, self._encoded_height, self._rate, nvenc_options
        )
        logger.info(
            "encoding %dx%d at %s fps with %s", self._encoded_width, self._encoded_height, self._rate, self._codec
        )
        self._container = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        try:
            video = self._container.add_stream(self._codec, rate=self._rate)
            assert isinstance(video, av.VideoStream)  # an H.264 encoder makes a video stream
            video.width, video.height = self._encoded_width, self._encoded_height
            video.pix_fmt = "yuv420p"
            video.options = {**_codec_options(self._codec, crf, preset)}
            self._video = video
            context = video.codec_context
            context.colorspace = context.color_primaries = context.color_trc = _BT601
            context.color_range = _TV_RANGE
            self._audio: av.AudioStream | None = None
            if audio is not None:
                self._audio = self._container.add_stream("aac", rate=_aac_rate(self._audio_rate))
                self._audio.layout = self._audio_layout
        except BaseException:
            self.abort()
            raise

    def write_frames(self, frames: np.ndarray) -> None:
        """Appends T×H×W×C uint8 frames (C 1, 3 or 4; alpha is dropped)."""
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] not in IMAGE_CHANNELS:
            raise InvalidArgument(
                f"frames must be T×H×W×C uint8 with 1, 3 or 4 channels, got {frames.dtype} {list(frames.shape)}",
                reason="BAD_SHAPE",
            )
        if frames.shape[1:3] != (self._height, self._width):
            raise InvalidArgument(
                f"frames are {frames.shape[2]}×{frames.shape[1]}, the video is {self._width}×{self._height}",
                reason="FRAME_SIZE_MISMATCH",
            )
        rgb = _rgb(frames)
        if (self._encoded_height, self._encoded_width) != (self._height, self._width):
            extra = ((0, 0), (0, self._encoded_height - self._height), (0, self._encoded_width - self._width), (0, 0))
            rgb = np.pad(rgb, extra, mode="edge")
        for pixels in rgb:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = self._frame_count
            frame.time_base = 1 / self._rate
            self._container.mux(self._video.encode(frame))
            self._frame_count += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Appends float32 samples shaped (channels, samples), in [-1, 1], to the audio track."""
        if self._audio is None:
            raise InvalidArgument("this video was opened without an audio track", reason="NO_AUDIO_TRACK")
        if samples.dtype != np.float32 or samples.ndim != 2 or samples.shape[0] != self._audio_channels:
            raise InvalidArgument(
                f"audio must be float32 ({self._audio_channels}, samples), got {samples.dtype} {list(samples.shape)}",
                reason="BAD_SHAPE",
            )
        for start in range(0, samples.shape[1], _AUDIO_BLOCK):
            block = np.ascontiguousarray(samples[:, start : start + _AUDIO_BLOCK])
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self._audio_layout)
            frame.sample_rate = self._audio_rate  # the encoder resamples when AAC cannot carry this rate
            self._container.mux(self._audio.encode(frame))
        self._audio_samples += samples.shape[1]

    def close(self) -> VideoInfo:
        """Flushes the encoders and finishes the file; a video without frames is refused and removed."""
        if self._frame_count == 0:
            self.abort()
            raise InvalidArgument("a video needs at least one frame", reason="NO_FRAMES")
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._container.mux(self._audio.encode(None))
            self._closed = True
            self._container.close()
        except BaseException:
            self.abort()
            raise
        return VideoInfo(
            width=self._encoded_width,
            height=self._encoded_height,
            fps=float(self._rate),
            frame_count=self._frame_count,
            duration_seconds=float(self._frame_count / self._rate),
            has_audio=self._audio_samples > 0,
            codec=self._codec,
        )

    def abort(self) -> None:
        """Stops and deletes the file (cancelled or failed request); safe to call at any point, and again."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:
                logger.debug("closing an aborted mp4 failed", exc_info=True)
        self._path.unlink(missing_ok=True)


def check_video_options(video: Mp4Format) -> None:
    """A writer's rules, which read no frame: a request is checked against them before its frames arrive."""
    width, height, fps = video.width, video.height, video.fps
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"video size {width}×{height} must be positive", reason="BAD_SHAPE")
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InvalidArgument(f"fps {fps} must be above 0 and at most {MAX_FPS:g}", reason="BAD_FPS")
    if video.crf is not None and not 0 <= video.crf <= 51:
        raise InvalidArgument(f"crf {video.crf} is outside 0..51", reason="BAD_CRF")
    if video.preset and video.preset not in X264_PRESETS:
        known = ", ".join(X264_PRESETS)
        raise InvalidArgument(f"unknown preset {video.preset!r}; use one of {known}", reason="BAD_PRESET")
    choice(VideoCodecPreference, video.codec_preference, field="codec_preference", reason="BAD_CODEC_PREFERENCE")
    policy = choice(OddSizePolicy, video.odd_size_policy, field="odd_size_policy", reason="BAD_ODD_SIZE_POLICY")
    if policy == OddSizePolicy.REJECT and (width % 2 or height % 2):
        raise InvalidArgument(f"{width}×{height} is odd; yuv420p video needs even sizes", reason="ODD_SIZE")


def check_audio_options(audio: AudioTrackFormat) -> None:
    """INVALID_ARGUMENT for a track the writer cannot carry."""
    if not audio.sample_rate:
        raise InvalidArgument("the audio track needs a sample rate", reason="MISSING_SAMPLE_RATE")
    check_sample_rate(audio.sample_rate)
    if not 1 <= audio.channels <= MAX_AUDIO_CHANNELS:
        raise InvalidArgument(f"a video's audio track has 1 or 2 channels, not {audio.channels}", reason="BAD_CHANNELS")


def _video_codec(codec_preference: int, width: int, height: int, rate: Fraction, nvenc_options: dict[str, str]) -> str:
    # The contract lets UNSPECIFIED use the GPU as GPU_IF_AVAILABLE does; only CPU rules it out.
    if codec_preference == VideoCodecPreference.CPU:
        return "libx264"
    try:  # with the real size and options: an old driver may know NVENC but not its p1…p7 presets
        probe = av.CodecContext.create("h264_nvenc", "w")
        probe.width, probe.height, probe.pix_fmt, probe.time_base = width, height, "yuv420p", 1 / rate
        probe.options = {**nvenc_options}
        probe.open()
    except Exception as error:  # noqa: BLE001 (no GPU, no driver, or a refused size: all mean libx264)
        logger.debug("h264_nvenc unavailable (%s); using libx264", error)
        return "libx264"
    return "h264_nvenc"


def _codec_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    if codec == "h264_nvenc":
        # Constant quality: NVENC's cq plays the part of x264's crf (same 0..51 scale).
        return {"preset": NVENC_PRESETS[preset], "rc": "vbr", "cq": str(crf), "b": "0"}
    return {"crf": str(crf), "preset": preset}


def _aac_rate(sample_rate: int) -> int:
    return next((rate for rate in AAC_SAMPLE_RATES if rate >= sample_rate), AAC_SAMPLE_RATES[-1])


def _rgb(frames: np.ndarray) -> np.ndarray:
    channels = frames.shape[3]
    if channels == 1:
        return np.repeat(frames, 3, axis=3)
    return frames[..., :3]
