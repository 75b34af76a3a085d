"""An mp4 encoded while its tensor arrives: the video never sits whole in memory.

    pipeline = VideoPipeline(spec, spec.media, path, run)
    await pipeline.feed(chunk)…          # whole frames go to the encoder as they land
    info = await pipeline.finish()       # the file at `path` is complete
    await pipeline.abort()               # or: stop, and leave no file

Each run of whole frames that lands goes to the encode executor as one block,
and the next block is received while that one encodes (one block in flight:
more would only queue behind the one writer). The frames move on without a
copy when a chunk holds whole frames, as the SDK sends them.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np

from ferry.errors import InvalidArgument
from ferry.services.encoder.audio import audio_samples
from ferry.services.encoder.pipeline import Run
from ferry.services.encoder.request import AudioChunk, Chunk
from ferry.services.encoder.spec import EncodeSpec, VideoSpec
from ferry.services.encoder.tensors import tensor_from_bytes
from ferry.services.encoder.video import Mp4Writer, VideoInfo, video_frames


class SharedMp4Writer:
    """The Mp4Writer as the executor threads share it: one call at a time, under a lock.

    The first block opens the writer. `abort` waits for a block still encoding
    and then removes the file; a block that starts after it opens nothing.
    """

    def __init__(self, spec: EncodeSpec, video: VideoSpec, path: Path) -> None:
        self._spec = spec
        self._video = video
        self._path = path
        self._lock = threading.Lock()
        self._writer: Mp4Writer | None = None
        self._aborted = False

    @property
    def opened(self) -> bool:
        return self._writer is not None

    def write_block(self, raw: bytes | bytearray) -> None:
        """Whole frames into the video, in one worker-thread trip."""
        spec, video = self._spec, self._video
        shape = [len(raw) // video.frame_bytes, *spec.tensor.shape[1:]]
        frames = video_frames(tensor_from_bytes(spec.tensor.dtype, shape, raw), spec.channel_order, video.value_range)
        with self._lock:
            if self._aborted:
                return
            if self._writer is None:
                self._writer = self._open()
            self._writer.write_frames(frames)

    def _open(self) -> Mp4Writer:
        return Mp4Writer(self._path, self._video, self._video.audio)

    def write_audio(self, samples: np.ndarray) -> None:
        with self._lock:
            assert self._writer is not None, "frames come first"
            self._writer.write_audio(samples)

    def close(self) -> VideoInfo:
        with self._lock:
            assert self._writer is not None, "frames come first"
            return self._writer.close()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._writer is not None:
                self._writer.abort()


class VideoPipeline:
    def __init__(self, spec: EncodeSpec, video: VideoSpec, path: Path, run: Run) -> None:
        self.path = path
        self._spec = spec
        self._video = video
        self._run = run
        self._writer = SharedMp4Writer(spec, video, path)
        self._pending = bytearray()  # the start of a frame a chunk split
        self._audio = bytearray()
        self._received = 0
        # The block before this one, still encoding: the next block is received meanwhile.
        self._encoding: asyncio.Future[None] | None = None

    async def feed(self, chunk: Chunk) -> None:
        if isinstance(chunk, AudioChunk):
            self._feed_audio(chunk.data)
            return
        data, expected, frame_bytes = chunk.data, self._spec.tensor.size, self._video.frame_bytes
        self._received += len(data)
        if self._received > expected:
            raise InvalidArgument(
                f"more than the {expected} bytes shape {list(self._spec.tensor.shape)} needs",
                reason="TENSOR_SIZE_MISMATCH",
            )
        if not self._pending and len(data) % frame_bytes == 0:
            frames: bytes | bytearray = data  # whole frames: no further copy
        else:
            self._pending += data
            whole = len(self._pending) - len(self._pending) % frame_bytes
            frames = self._pending[:whole]  # the frames move out whole; the rest stays for the next chunk
            del self._pending[:whole]
        if frames:
            if self._encoding is not None:
                await self._encoding
            self._encoding = asyncio.ensure_future(self._run(self._writer.write_block, frames))
            # A failure is raised where the block is awaited; if the stream fails first, it is read here.
            self._encoding.add_done_callback(lambda done: done.cancelled() or done.exception())

    def _feed_audio(self, data: bytes) -> None:
        track = self._video.audio
        if track is None:
            raise InvalidArgument("unexpected audio_chunk message in a video stream", reason="UNEXPECTED_MESSAGE")
        self._audio += data
        if len(self._audio) > track.tensor.size:
            raise InvalidArgument("more audio bytes than the audio track's shape", reason="TENSOR_SIZE_MISMATCH")

    async def finish(self) -> VideoInfo:
        """Once every chunk is fed: the last frames and the audio track in, and the file closed at `path`."""
        if self._encoding is not None:
            await self._encoding
        expected = self._spec.tensor.size
        if self._received != expected or not self._writer.opened:
            raise InvalidArgument(
                f"{self._received} bytes arrived, shape {list(self._spec.tensor.shape)} needs {expected}",
                reason="TENSOR_SIZE_MISMATCH",
            )
        track = self._video.audio
        if track is not None:
            tensor = tensor_from_bytes(track.tensor.dtype, track.tensor.shape, self._audio)
            await self._run(self._writer.write_audio, audio_samples(tensor, self._spec.channel_order))
        return await self._run(self._writer.close)

    async def abort(self) -> None:
        """Stop encoding and remove the file; after any failure, or when the caller goes."""
        if self._encoding is not None:
            self._encoding.cancel()
        await self._run(self._writer.abort)
