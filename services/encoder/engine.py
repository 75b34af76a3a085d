"""The encoder engine: tensors into media files in storage.

    spec = encoder.spec(header)                       # every header rule, checked once (spec.py)
    files = await encoder.encode(spec, chunks, expires_in=None)   # [EncodedFile]

Chunks are fed to a pipeline as they arrive (video_pipeline.py,
image_pipeline.py, wav_pipeline.py); pixels, frames and samples are encoded in
an executor sized to the machine, never on the event loop. A caller that goes
away mid-stream (the RPC is cancelled) stops the pipeline: temp files and
partial encodes are discarded, and nothing reaches storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ferry.errors import FerryError
from ferry.services import tracing
from ferry.services.config import EncoderConfig
from ferry.services.encoder.audio import AudioInfo
from ferry.services.encoder.image_pipeline import ImagePipeline
from ferry.services.encoder.pipeline import fed
from ferry.services.encoder.request import Chunk, EncodeHeader
from ferry.services.encoder.spec import EncodeLimits, EncodeSpec, ImageSpec, VideoSpec, WavSpec
from ferry.services.encoder.video import VideoInfo
from ferry.services.encoder.video_pipeline import VideoPipeline
from ferry.services.encoder.wav_pipeline import WavPipeline
from ferry.services.metrics import StackMetrics
from ferry.services.storage.base import NewObject, Storage, StoredObject
from ferry.sizes import MIB

T = TypeVar("T")


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int


@dataclass(frozen=True)
class EncodedFile:
    stored: StoredObject
    media: ImageSize | VideoInfo | AudioInfo


class Encoder:
    """`incoming` holds videos while they are encoded: beside local storage, so storing one is a rename."""

    def __init__(
        self,
        storage: Storage,
        config: EncoderConfig,
        incoming: Path,
        executor: Executor,
        encode_threads: int,
        metrics: StackMetrics | None = None,
    ) -> None:
        self.storage = storage
        self.metrics = metrics or StackMetrics()
        self.incoming = incoming
        self.executor = executor
        self.encode_threads = encode_threads
        self.limits = EncodeLimits(max_bytes=int(config.max_tensor_mib * MIB), max_pixels=config.max_pixels)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def spec(self, header: EncodeHeader) -> EncodeSpec:
        """The header checked against every rule, before any tensor byte is read."""
        return EncodeSpec.from_header(header, self.limits)

    async def encode(self, spec: EncodeSpec, chunks: AsyncIterator[Chunk], expires_in: int | None) -> list[EncodedFile]:
        """The stream's tensor encoded as `spec` says and stored: one file, or one per image of a batch (one
        `ferry.encode` span while tracing is on, with a `ferry.store` span for each file stored)."""
        with tracing.span("ferry.encode", {"ferry.encode.tensor_bytes": spec.tensor.size}):
            files = await self._encode(spec, chunks, expires_in)
            tracing.annotate(
                {
                    "ferry.encode.content_type": files[0].stored.content_type if files else "",
                    "ferry.encode.files": len(files),
                    "ferry.encode.bytes": sum(file.stored.size for file in files),
                }
            )
            return files

    async def _encode(
        self, spec: EncodeSpec, chunks: AsyncIterator[Chunk], expires_in: int | None
    ) -> list[EncodedFile]:
        media = spec.media
        format = "mp4" if isinstance(media, VideoSpec) else "wav" if isinstance(media, WavSpec) else media.format
        began = time.perf_counter()
        try:
            if isinstance(media, VideoSpec):
                files = [await self._video(spec, media, chunks, expires_in)]
            elif isinstance(media, WavSpec):
                files = [await self._wav(spec, media, chunks, expires_in)]
            else:
                files = await self._images(spec, media, chunks, expires_in)
        except FerryError as error:
            self.metrics.encodes.labels(format, error.reason).inc()
            raise
        self.metrics.encodes.labels(format, "ok").inc()
        self.metrics.encode_seconds.labels(format).observe(time.perf_counter() - began)
        self.metrics.encoded_bytes.labels(format).inc(sum(file.stored.size for file in files))
        self.metrics.encode_input_bytes.labels(format).inc(_input_bytes(spec))
        return files

    async def _images(
        self, spec: EncodeSpec, image: ImageSpec, chunks: AsyncIterator[Chunk], expires_in: int | None
    ) -> list[EncodedFile]:
        pipeline = ImagePipeline(
            spec, image, self._run, max_pixels=self.limits.max_pixels, encode_threads=self.encode_threads
        )
        images = await fed(pipeline, chunks)
        files: list[EncodedFile] = []
        for index, encoded in enumerate(images):
            name = f"{spec.base_name}{'' if len(images) == 1 else f'-{index}'}{encoded.extension}"
            new = NewObject(name, encoded.content_type, expires_in, spec.object_id(index))
            stored = await self.storage.put_bytes(encoded.data, new)
            files.append(EncodedFile(stored, ImageSize(encoded.width, encoded.height)))
        return files

    async def _wav(
        self, spec: EncodeSpec, wav: WavSpec, chunks: AsyncIterator[Chunk], expires_in: int | None
    ) -> EncodedFile:
        data, info = await fed(WavPipeline(spec, wav, self._run), chunks)
        new = NewObject(f"{spec.base_name}.wav", "audio/wav", expires_in, spec.object_id(0))
        stored = await self.storage.put_bytes(data, new)
        return EncodedFile(stored, info)

    async def _video(
        self, spec: EncodeSpec, video: VideoSpec, chunks: AsyncIterator[Chunk], expires_in: int | None
    ) -> EncodedFile:
        self.incoming.mkdir(parents=True, exist_ok=True)
        pipeline = VideoPipeline(spec, video, self.incoming / f"{os.urandom(8).hex()}.mp4", self._run)
        try:
            info = await fed(pipeline, chunks)
            sha256 = await self._run(_sha256_file, pipeline.path)
            new = NewObject(f"{spec.base_name}.mp4", "video/mp4", expires_in, spec.object_id(0))
            stored = await self.storage.put_file(pipeline.path, new, sha256)
        finally:
            pipeline.path.unlink(missing_ok=True)  # storage linked or copied it; or it failed, and goes
        return EncodedFile(stored, info)


def _input_bytes(spec: EncodeSpec) -> int:
    """The tensor's bytes and its audio track's: what the stream carried, all of it (the pipelines refuse less)."""
    media = spec.media
    audio = media.audio.tensor.size if isinstance(media, VideoSpec) and media.audio is not None else 0
    return spec.tensor.size + audio


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()
