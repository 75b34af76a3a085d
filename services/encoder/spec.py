"""An Encode header, checked once into an `EncodeSpec` before any tensor byte is read.

Every rule a header can break is checked here, in one pass, in this order: the
format; the tensor's dtype and shape, and the audio track's; the size cap; the
file name and output key; the channel order; then the medium's own rules (an image's options
and layout; a video's frames, writer options and audio track; a wav's layout
and options). The codec modules own each rule, and this module calls them on
the shape alone (`tensors.shape_only`), so a rule is written once wherever it
is applied. What only the data can break (NaN, integers out of a pixel's
range, too few bytes) is found as it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.services.encoder.audio import audio_layout, check_wav_options
from ferry.services.encoder.choices import (
    AudioSampleFormat,
    ChannelOrder,
    DataType,
    MediaFormat,
    ValueRange,
    choice,
)
from ferry.services.encoder.file_names import base_name
from ferry.services.encoder.images import check_image_options
from ferry.services.encoder.request import AudioOptions, EncodeHeader, ImageOptions, TensorHeader, VideoOptions
from ferry.services.encoder.tensors import expected_bytes, image_batch, shape_only
from ferry.services.encoder.video import AudioTrackFormat, Mp4Format, check_audio_options, check_video_options
from ferry.services.storage.base import keyed_object_id

# An output key is hashed into object ids, so its length only bounds what a header may carry.
MAX_OUTPUT_KEY_BYTES = 256
IMAGE_FORMATS = {MediaFormat.PNG: "png", MediaFormat.JPEG: "jpeg", MediaFormat.WEBP: "webp", MediaFormat.GIF: "gif"}


@dataclass(frozen=True)
class EncodeLimits:
    max_bytes: int  # the tensor and its audio track together, per request
    max_pixels: int  # per image or video frame


@dataclass(frozen=True)
class Tensor:
    dtype: DataType
    shape: tuple[int, ...]
    size: int  # in bytes


@dataclass(frozen=True)
class ImageSpec:
    format: str  # images.py's name: "png", "jpeg", "webp" or "gif"
    value_range: ValueRange
    options: ImageOptions  # checked


@dataclass(frozen=True, kw_only=True)
class AudioTrackSpec(AudioTrackFormat):
    """A video's audio track: its format, and the tensor its samples arrive as."""

    tensor: Tensor


@dataclass(frozen=True, kw_only=True)
class VideoSpec(Mp4Format):
    """The mp4 the frames make (checked, so the writer opens it as it is), and how they arrive."""

    frame_count: int
    frame_bytes: int
    value_range: ValueRange
    audio: AudioTrackSpec | None = None


@dataclass(frozen=True)
class WavSpec:
    sample_rate: int
    sample_format: AudioSampleFormat


@dataclass(frozen=True)
class EncodeSpec:
    tensor: Tensor
    channel_order: ChannelOrder
    base_name: str  # the stored files' name before "-<index>" and the extension
    media: ImageSpec | VideoSpec | WavSpec
    output_key: str = ""  # "": each file gets a fresh object id

    def object_id(self, index: int) -> str | None:
        """The id the `index`th stored file goes under: derived from the output key, or None for a fresh one."""
        return keyed_object_id(f"{self.output_key}#{index}") if self.output_key else None

    @classmethod
    def from_header(cls, header: EncodeHeader, limits: EncodeLimits) -> EncodeSpec:
        """The header checked against every rule; INVALID_ARGUMENT or RESOURCE_EXHAUSTED for the first it breaks."""
        media_format = choice(MediaFormat, header.format, field="format", reason="BAD_FORMAT")
        if media_format == MediaFormat.UNSPECIFIED:
            raise InvalidArgument(f"unknown format {header.format}", reason="BAD_FORMAT")
        tensor = _tensor(header.tensor)
        options = header.options
        video = options if isinstance(options, VideoOptions) else VideoOptions()
        track = video.audio_track if media_format == MediaFormat.MP4 else None
        track_tensor = None if track is None else _tensor(track.tensor)
        total = tensor.size + (0 if track_tensor is None else track_tensor.size)
        if total > limits.max_bytes:
            raise ResourceExhausted(f"{total} bytes is over the {limits.max_bytes}-byte cap", reason="TENSOR_TOO_LARGE")
        name = base_name(header.file_name)
        output_key = _output_key(header.output_key)
        order = choice(ChannelOrder, header.channel_order, field="channel_order", reason="BAD_CHANNEL_ORDER")
        media: ImageSpec | VideoSpec | WavSpec
        if media_format == MediaFormat.MP4:
            media = _video(tensor, order, video, track_tensor, limits)
        elif media_format == MediaFormat.WAV:
            media = _wav(tensor, order, options)
        else:
            image = options if isinstance(options, ImageOptions) else ImageOptions()
            media = _image(IMAGE_FORMATS[media_format], tensor, order, image, limits)
        return cls(tensor, order, name, media, output_key)


def _output_key(key: str) -> str:
    if len(key.encode()) > MAX_OUTPUT_KEY_BYTES:
        raise InvalidArgument(f"output_key is over {MAX_OUTPUT_KEY_BYTES} bytes", reason="BAD_OUTPUT_KEY")
    return key


def _tensor(header: TensorHeader) -> Tensor:
    size = expected_bytes(header.dtype, header.shape)  # refuses unknown dtypes and bad shapes first
    return Tensor(DataType(header.dtype), header.shape, size)


def _image(fmt: str, tensor: Tensor, order: ChannelOrder, options: ImageOptions, limits: EncodeLimits) -> ImageSpec:
    check_image_options(fmt, options)
    image_batch(shape_only(tensor.shape), order, max_pixels=limits.max_pixels)
    value_range = choice(ValueRange, options.value_range, field="value_range", reason="BAD_VALUE_RANGE")
    return ImageSpec(fmt, value_range, options)


def _video(
    tensor: Tensor, order: ChannelOrder, options: VideoOptions, track: Tensor | None, limits: EncodeLimits
) -> VideoSpec:
    if len(tensor.shape) != 4:
        raise InvalidArgument(f"video tensors are THWC or TCHW, got shape {list(tensor.shape)}", reason="BAD_SHAPE")
    frame_count, height, width, _ = image_batch(shape_only(tensor.shape), order, max_pixels=limits.max_pixels).shape
    value_range = choice(ValueRange, options.value_range, field="value_range", reason="BAD_VALUE_RANGE")
    video = VideoSpec(
        width=width,
        height=height,
        fps=options.fps,
        crf=options.crf,
        preset=options.preset,
        codec_preference=options.codec_preference,
        odd_size_policy=options.odd_size_policy,
        frame_count=frame_count,
        frame_bytes=tensor.size // frame_count,
        value_range=value_range,
    )
    check_video_options(video)
    if track is None:
        return video
    assert options.audio_track is not None  # `track` is its tensor, checked
    channels = audio_layout(track.shape, order).channels
    audio = AudioTrackSpec(sample_rate=options.audio_track.sample_rate, channels=channels, tensor=track)
    check_audio_options(audio)
    return replace(video, audio=audio)


def _wav(tensor: Tensor, order: ChannelOrder, options: ImageOptions | VideoOptions | AudioOptions | None) -> WavSpec:
    if not isinstance(options, AudioOptions):
        raise InvalidArgument("wav needs audio options with a sample rate", reason="MISSING_SAMPLE_RATE")
    audio_layout(tensor.shape, order)
    check_wav_options(options.sample_rate, options.sample_format)
    return WavSpec(options.sample_rate, AudioSampleFormat(options.sample_format))
