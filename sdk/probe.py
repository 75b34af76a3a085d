"""What a local video or audio file holds — size, frame rate, duration, sample rate — read from its header.

`Video.from_path` and `Audio.from_path` fill their fields from here, as the
reference toolkit's do. PyAV does the reading; it comes with the services
(`ferry-media[services]`), not with the bare SDK, so without it every figure
stays unknown (0) rather than the SDK growing a dependency on FFmpeg. A file
FFmpeg cannot read is not an error either: it is uploaded as it is, its
figures unknown.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import IO, Any

__all__ = ["probe_audio", "probe_video"]


Source = str | os.PathLike[str] | IO[bytes]


def probe_video(path: Source) -> dict[str, Any]:
    """`width`, `height`, `fps`, `frame_count`, `duration_seconds`, `has_audio` — those the header gives."""
    return _probe(path, _video_fields)


def probe_audio(path: Source) -> dict[str, Any]:
    """`sample_rate`, `channels`, `duration_seconds`, `sample_count` — those the header gives."""
    return _probe(path, _audio_fields)


def _probe(source: Source, read: Any) -> dict[str, Any]:
    try:
        import av
    except ImportError:
        return {}
    try:
        with av.open(source if hasattr(source, "read") else os.fspath(source)) as container:
            fields: dict[str, Any] = read(container)
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return {}
    return {name: value for name, value in fields.items() if value}


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000  # AV_TIME_BASE
    return 0.0


def _video_fields(container: Any) -> dict[str, Any]:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    duration = _duration(container, stream)
    frames = stream.frames or (round(duration * rate) if rate and duration else 0)
    return {
        "width": stream.codec_context.width,
        "height": stream.codec_context.height,
        "fps": float(Fraction(rate)) if rate else 0.0,
        "frame_count": frames,
        "duration_seconds": duration,
        "has_audio": bool(container.streams.audio),
    }


def _audio_fields(container: Any) -> dict[str, Any]:
    stream = container.streams.audio[0]
    rate = stream.codec_context.sample_rate
    duration = _duration(container, stream)
    return {
        "sample_rate": rate,
        "channels": stream.codec_context.channels,
        "duration_seconds": duration,
        "sample_count": round(duration * rate) if rate else 0,
    }
