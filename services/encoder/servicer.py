"""EncoderService: tensors into media files, uploads into storage, each answered with a `File`.

Streams are read here; pixels, frames and samples are encoded by the engine
modules in an executor sized to the machine, never on the event loop. A client
that cancels or dies mid-stream cancels this handler: temp files and partial
encodes are discarded and nothing reaches storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ferry.services.config import EncoderConfig
from ferry.services.downloader.names import MAX_NAME_BYTES, safe_file_name
from ferry.services.encoder.audio import audio_samples, encode_wav
from ferry.services.encoder.images import EncodedImage, encode_images
from ferry.services.encoder.incoming import IncomingFile
from ferry.services.encoder.streamed_jpeg import StreamedJpeg
from ferry.services.encoder.tensors import ArrivingTensor, expected_bytes, tensor_from_bytes
from ferry.services.encoder.video import Mp4Writer, video_frames
from ferry.services.errors import FerryError, InvalidArgument, ResourceExhausted, abort_with
from ferry.services.health import NOT_SERVING, SERVING
from ferry.services.lifecycle import expires_in
from ferry.services.settings import Settings
from ferry.services.storage.base import Storage, StoredObject, check_part_number
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.media_types import check_content_type
from ferry.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

T = TypeVar("T")
MIB = 1 << 20
# Room after an Encode's base name for "-<index>" and the longest extension (".jpeg"), within 255 bytes.
BASE_NAME_BYTES = MAX_NAME_BYTES - 16
IMAGE_FORMATS = {
    encoder_pb2.MEDIA_FORMAT_PNG: "png",
    encoder_pb2.MEDIA_FORMAT_JPEG: "jpeg",
    encoder_pb2.MEDIA_FORMAT_WEBP: "webp",
    encoder_pb2.MEDIA_FORMAT_GIF: "gif",
}


def file_message(stored: StoredObject) -> common_pb2.File:
    message = common_pb2.File(
        url=stored.url,
        content_type=stored.content_type,
        file_name=stored.file_name,
        file_size=stored.size,
        sha256=stored.sha256,
    )
    if stored.expires_at is not None:
        message.expires_at.FromDatetime(stored.expires_at)
    return message


async def _first_header(requests: AsyncIterator[Any], what: str) -> Any:
    """The header a client stream must open with (`what` names it in the error)."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("message") != "header":
        raise InvalidArgument(f"the first message must be {what}", reason="MISSING_HEADER")
    return first.header


def _content_type(declared: str, file_name: str) -> str:
    """The caller's content type, checked (it becomes a header), else one guessed from the name."""
    if declared:
        return check_content_type(declared)
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def _safe_name(requested: str) -> str:
    """The basename of the caller's file name, cut to 255 bytes; INVALID_ARGUMENT if nothing safe is left."""
    name = safe_file_name(requested)
    if name is None:
        shown = f"{requested[:40]!r}{'…' if len(requested) > 40 else ''}"
        raise InvalidArgument(
            f"file name {shown} is not a safe basename: no control characters, not empty, '.' or '..'",
            reason="BAD_FILE_NAME",
        )
    return name


def _upload_name(requested: str, content_type: str) -> str:
    return _safe_name(requested) if requested else "upload" + (mimetypes.guess_extension(content_type) or ".bin")


@dataclass
class EncodeRequestHeader:
    """The first message of an Encode stream, checked."""

    header: encoder_pb2.EncodeHeader
    tensor_bytes: int
    audio_bytes: int
    base_name: str  # the stored files' name before "-<index>" and the extension


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, storage: Storage, config: EncoderConfig, incoming: Path, executor: Executor, encode_threads: int) -> None:
        self.storage = storage
        self.config = config
        self.incoming = incoming
        self.executor = executor
        self.encode_threads = encode_threads
        self.cap = int(config.max_tensor_mib * MIB)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # -- Encode ---------------------------------------------------------------------------

    def _check_header(self, header: encoder_pb2.EncodeHeader) -> EncodeRequestHeader:
        if header.format not in encoder_pb2.MediaFormat.values() or header.format == encoder_pb2.MEDIA_FORMAT_UNSPECIFIED:
            raise InvalidArgument(f"unknown format {header.format}", reason="BAD_FORMAT")
        tensor_bytes = expected_bytes(header.tensor.dtype, header.tensor.shape)
        audio_bytes = 0
        if header.WhichOneof("options") == "video" and header.video.HasField("audio_track"):
            track = header.video.audio_track
            audio_bytes = expected_bytes(track.tensor.dtype, track.tensor.shape)
        if tensor_bytes + audio_bytes > self.cap:
            raise ResourceExhausted(
                f"{tensor_bytes + audio_bytes} bytes is over the {self.cap}-byte cap", reason="TENSOR_TOO_LARGE"
            )
        return EncodeRequestHeader(header, tensor_bytes, audio_bytes, _base_name(header.file_name))

    async def Encode(  # noqa: N802 (generated name)
        self, request_iterator: AsyncIterator[encoder_pb2.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        try:
            header = await _first_header(request_iterator, "the header")
            checked = self._check_header(header)
            lifetime = expires_in(header.lifecycle, context)
            if header.format == encoder_pb2.MEDIA_FORMAT_MP4:
                stored = [await self._encode_video(checked, request_iterator, lifetime)]
            else:
                stored = await self._encode_buffered(checked, request_iterator, lifetime)
            return encoder_pb2.EncodeResponse(files=stored)
        except FerryError as error:
            await abort_with(context, error)

    def _streamed_jpeg(self, header: encoder_pb2.EncodeHeader, arriving: ArrivingTensor) -> StreamedJpeg | None:
        if header.format != encoder_pb2.MEDIA_FORMAT_JPEG or header.image.animate:
            return None
        options = header.image
        return StreamedJpeg.plan(
            arriving,
            channel_order=header.channel_order,
            value_range=options.value_range,
            quality=options.quality if options.HasField("quality") else None,
            max_pixels=self.config.max_pixels,
            run=self._run,
            # Two strips per encode thread: the first starts early, and the one still to encode when
            # the last byte lands is short (1, 2, 4 and 8 strips measured on 2 threads: 4 was best).
            parts=2 * self.encode_threads,
        )

    async def _encode_buffered(
        self, checked: EncodeRequestHeader, requests: AsyncIterator[encoder_pb2.EncodeRequest], lifetime: int | None
    ) -> list[common_pb2.File]:
        header = checked.header
        arriving = ArrivingTensor(header.tensor.dtype, header.tensor.shape)
        streamed = self._streamed_jpeg(header, arriving)
        try:
            async for request in requests:
                if request.WhichOneof("message") != "chunk":
                    raise InvalidArgument("only tensor chunks may follow the header", reason="UNEXPECTED_MESSAGE")
                arriving.add(request.chunk)
                if streamed is not None:
                    streamed.rows_arrived()
            tensor = arriving.tensor()
            if streamed is not None:
                return await self._store_images([await streamed.finish()], checked.base_name, lifetime)
        except BaseException:
            if streamed is not None:
                streamed.cancel()
            raise
        if header.format == encoder_pb2.MEDIA_FORMAT_WAV:
            if header.WhichOneof("options") != "audio":
                raise InvalidArgument("wav needs audio options with a sample rate", reason="MISSING_SAMPLE_RATE")
            samples = audio_samples(tensor, header.channel_order)
            wav, info = await self._run(encode_wav, samples, header.audio.sample_rate, header.audio.sample_format)
            stored = await self.storage.put_bytes(
                wav, file_name=f"{checked.base_name}.wav", content_type="audio/wav", expires_in=lifetime
            )
            message = file_message(stored)
            message.audio.CopyFrom(
                common_pb2.AudioInfo(
                    sample_rate=info.sample_rate,
                    channels=info.channels,
                    duration_seconds=info.duration_seconds,
                    sample_count=info.sample_count,
                )
            )
            return [message]
        options = header.image
        images = await self._run(
            lambda: encode_images(
                tensor,
                IMAGE_FORMATS[header.format],
                channel_order=header.channel_order,
                value_range=options.value_range,
                quality=options.quality if options.HasField("quality") else None,
                lossless=options.lossless,
                png_compress_level=options.png_compress_level if options.HasField("png_compress_level") else None,
                animate=options.animate,
                frame_duration_ms=options.frame_duration_ms,
                loop=options.loop,
                max_pixels=self.config.max_pixels,
            )
        )
        return await self._store_images(images, checked.base_name, lifetime)

    async def _store_images(self, images: list[EncodedImage], base: str, lifetime: int | None) -> list[common_pb2.File]:
        files: list[common_pb2.File] = []
        for index, image in enumerate(images):
            name = f"{base}{'' if len(images) == 1 else f'-{index}'}{image.extension}"
            stored = await self.storage.put_bytes(image.data, file_name=name, content_type=image.content_type, expires_in=lifetime)
            message = file_message(stored)
            message.image.CopyFrom(common_pb2.ImageInfo(width=image.width, height=image.height))
            files.append(message)
        return files

    async def _encode_video(
        self, checked: EncodeRequestHeader, requests: AsyncIterator[encoder_pb2.EncodeRequest], lifetime: int | None
    ) -> common_pb2.File:
        """Frames stream into the encoder as whole frames arrive; the video never sits whole in memory."""
        header = checked.header
        shape = list(header.tensor.shape)
        if len(shape) != 4:
            raise InvalidArgument(f"video tensors are THWC or TCHW, got shape {shape}", reason="BAD_SHAPE")
        frame_count = shape[0]
        frame_bytes = checked.tensor_bytes // frame_count
        options = header.video
        track = options.audio_track if options.HasField("audio_track") else None
        base = checked.base_name
        out_path = self.incoming / f"{os.urandom(8).hex()}.mp4"
        self.incoming.mkdir(parents=True, exist_ok=True)
        writer: Mp4Writer | None = None
        aborted = False
        # Writer calls run on executor threads, one at a time: an abort waits
        # for a block still encoding, and a block that starts after it opens nothing.
        writer_lock = threading.Lock()

        def locked(method: Callable[..., T], *args: object) -> T:
            with writer_lock:
                return method(*args)

        def encode_block(raw: bytes | bytearray) -> None:
            """Whole frames into the video, in one worker-thread trip; the first block opens the writer."""
            nonlocal writer
            count = len(raw) // frame_bytes
            frames = video_frames(
                tensor_from_bytes(header.tensor.dtype, [count, *shape[1:]], raw), header.channel_order, options.value_range
            )
            with writer_lock:
                if aborted:
                    return
                if writer is None:
                    height, width = frames.shape[1:3]
                    if height * width > self.config.max_pixels:
                        raise ResourceExhausted(f"{width}x{height} frames are over the pixel cap", reason="TOO_MANY_PIXELS")
                    writer = Mp4Writer(
                        out_path,
                        width=width,
                        height=height,
                        fps=options.fps,
                        crf=options.crf if options.HasField("crf") else None,
                        preset=options.preset,
                        codec_preference=options.codec_preference,
                        odd_size_policy=options.odd_size_policy,
                        audio_sample_rate=track.sample_rate if track else None,
                        audio_channels=None if track is None else _channels(track, header.channel_order),
                    )
                writer.write_frames(frames)

        def abort() -> None:
            nonlocal aborted
            with writer_lock:
                aborted = True
                if writer is not None:
                    writer.abort()

        pending = bytearray()
        audio = bytearray()
        received = 0
        # The block before this one, still encoding: the next block is received meanwhile.
        encoding: asyncio.Future[None] | None = None

        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "chunk":
                    chunk = request.chunk  # read once: each read of a bytes field copies it out of the message
                    received += len(chunk)
                    if received > checked.tensor_bytes:
                        raise InvalidArgument(
                            f"more than the {checked.tensor_bytes} bytes shape {shape} needs", reason="TENSOR_SIZE_MISMATCH"
                        )
                    if not pending and len(chunk) % frame_bytes == 0:
                        frames_in: bytes | bytearray = chunk  # whole frames (the SDK sends them so): no further copy
                    else:
                        pending += chunk
                        whole = len(pending) - len(pending) % frame_bytes
                        frames_in = pending[:whole]  # the frames move out whole; the rest stays for the next chunk
                        del pending[:whole]
                    if frames_in:
                        if encoding is not None:
                            await encoding
                        encoding = asyncio.ensure_future(self._run(encode_block, frames_in))
                        # A failure is raised where the block is awaited; if the stream fails first, it is read here.
                        encoding.add_done_callback(lambda done: done.cancelled() or done.exception())
                elif kind == "audio_chunk" and track is not None:
                    audio += request.audio_chunk
                    if len(audio) > checked.audio_bytes:
                        raise InvalidArgument("more audio bytes than the audio track's shape", reason="TENSOR_SIZE_MISMATCH")
                else:
                    raise InvalidArgument(f"unexpected {kind} message in a video stream", reason="UNEXPECTED_MESSAGE")
            if encoding is not None:
                await encoding
            if received != checked.tensor_bytes or writer is None:
                raise InvalidArgument(
                    f"{received} bytes arrived, shape {shape} needs {checked.tensor_bytes}", reason="TENSOR_SIZE_MISMATCH"
                )
            if track is not None:
                samples = audio_samples(tensor_from_bytes(track.tensor.dtype, track.tensor.shape, audio), header.channel_order)
                await self._run(locked, writer.write_audio, samples)
            info = await self._run(locked, writer.close)
            sha256 = await self._run(_sha256_file, out_path)
            stored = await self.storage.put_file(
                out_path, file_name=f"{base}.mp4", content_type="video/mp4", sha256=sha256, expires_in=lifetime
            )
        except BaseException:
            if encoding is not None:
                encoding.cancel()
            await self._run(abort)
            raise
        finally:
            out_path.unlink(missing_ok=True)
        message = file_message(stored)
        message.video.CopyFrom(
            common_pb2.VideoInfo(
                width=info.width,
                height=info.height,
                fps=info.fps,
                frame_count=info.frame_count,
                duration_seconds=info.duration_seconds,
                has_audio=info.has_audio,
            )
        )
        return message

    # -- Upload ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _received_file(
        self,
        requests: AsyncIterator[encoder_pb2.UploadRequest | encoder_pb2.UploadPartRequest],
        declared: int | None,
        *,
        hashed: bool = True,
    ) -> AsyncIterator[tuple[IncomingFile, str]]:
        """The stream's chunks in a temp file and its sha256, for the block to store; the file goes when it ends."""
        incoming = IncomingFile(self.incoming, self.executor, limit=self.cap, declared_size=declared, hashed=hashed)
        try:
            async for request in requests:
                if request.WhichOneof("message") != "chunk":
                    raise InvalidArgument("only chunks may follow the header", reason="UNEXPECTED_MESSAGE")
                await incoming.write(request.chunk)
            yield incoming, await incoming.finish()
        finally:
            incoming.discard()

    async def Upload(  # noqa: N802
        self, request_iterator: AsyncIterator[encoder_pb2.UploadRequest], context: grpc.aio.ServicerContext
    ) -> encoder_pb2.UploadResponse:
        try:
            header = await _first_header(request_iterator, "the header")
            content_type = _content_type(header.content_type, header.file_name)
            name = _upload_name(header.file_name, content_type)
            lifetime = expires_in(header.lifecycle, context)
            declared = header.file_size if header.HasField("file_size") else None
            async with self._received_file(request_iterator, declared) as (incoming, sha256):
                stored = await self.storage.put_file(
                    incoming.path, file_name=name, content_type=content_type, sha256=sha256, expires_in=lifetime
                )
            return encoder_pb2.UploadResponse(file=file_message(stored))
        except FerryError as error:
            await abort_with(context, error)

    async def CreateUpload(  # noqa: N802
        self, request: encoder_pb2.CreateUploadRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.CreateUploadResponse:
        try:
            content_type = _content_type(request.content_type, request.file_name)
            upload_id = await self.storage.create_multipart(
                file_name=_upload_name(request.file_name, content_type),
                content_type=content_type,
                expires_in=expires_in(request.lifecycle, context),
            )
            return encoder_pb2.CreateUploadResponse(upload_id=upload_id)
        except FerryError as error:
            await abort_with(context, error)

    async def UploadPart(  # noqa: N802
        self, request_iterator: AsyncIterator[encoder_pb2.UploadPartRequest], context: grpc.aio.ServicerContext
    ) -> encoder_pb2.UploadPartResponse:
        try:
            part = await _first_header(request_iterator, "the part header")
            check_part_number(part.part_number)
            async with self._received_file(request_iterator, None, hashed=False) as (incoming, _):
                etag = await self.storage.put_part(part.upload_id, part.part_number, incoming.path)
            return encoder_pb2.UploadPartResponse(part_number=part.part_number, etag=etag, part_size=incoming.size)
        except FerryError as error:
            await abort_with(context, error)

    async def CompleteUpload(  # noqa: N802
        self, request: encoder_pb2.CompleteUploadRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.CompleteUploadResponse:
        try:
            if not request.parts:
                raise InvalidArgument("a multipart upload needs at least one part", reason="NO_PARTS")
            parts = sorted((p.part_number, p.etag) for p in request.parts)
            stored = await self.storage.complete_multipart(request.upload_id, parts)
            return encoder_pb2.CompleteUploadResponse(file=file_message(stored))
        except FerryError as error:
            await abort_with(context, error)

    async def AbortUpload(  # noqa: N802
        self, request: encoder_pb2.AbortUploadRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.AbortUploadResponse:
        try:
            await self.storage.abort_multipart(request.upload_id)
            return encoder_pb2.AbortUploadResponse()
        except FerryError as error:
            await abort_with(context, error)


def _base_name(requested: str) -> str:
    """The stored files' name without index and extension: the caller's, made safe and short enough, else "output"."""
    if not requested:
        return "output"
    stem = os.path.splitext(_safe_name(requested))[0]
    return stem.encode()[:BASE_NAME_BYTES].decode(errors="ignore")  # "ignore": a character the cut split in half


def _channels(track: encoder_pb2.AudioTrack, channel_order: int) -> int:
    """The audio track's channel count, by the layout rule `audio_samples` applies (which validates it)."""
    shape = list(track.tensor.shape)
    if len(shape) == 1:
        return 1
    if channel_order == encoder_pb2.CHANNEL_ORDER_FIRST:
        return shape[0]
    if channel_order == encoder_pb2.CHANNEL_ORDER_LAST:
        return shape[-1]
    return min(shape)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def storage_health_name(backend_name: str) -> str:
    """The health service name under which a storage backend is SERVING, or NOT_SERVING while its breaker is open."""
    return f"{encoder_pb2.DESCRIPTOR.services_by_name['EncoderService'].full_name}/storage/{backend_name}"


async def _report_storage_health(chain: StorageChain, health: Any) -> None:
    """Each backend's breaker as a health status; the overall status stays SERVING while another backend takes writes."""

    async def report(backend_name: str, serving: bool) -> None:
        await health.set(storage_health_name(backend_name), SERVING if serving else NOT_SERVING)

    for backend in chain.backends:
        await report(backend.name, True)
    chain.watch(report)


async def host(server: grpc.aio.Server, settings: Settings) -> Callable[[], Awaitable[None]]:
    """Serve EncoderService on `server` over the stack's storage chain."""
    assert settings.storage is not None, "the launcher builds storage before hosting the encoder"
    if settings.health is not None and isinstance(settings.storage, StorageChain):
        await _report_storage_health(settings.storage, settings.health)
    threads = settings.encoder.encode_threads or os.cpu_count() or 2
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ferry-encode")
    incoming = settings.server.data_dir / ".ferry" / "incoming"
    servicer = EncoderServicer(settings.storage, settings.encoder, incoming, executor, threads)
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, server)

    async def close() -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    return close
