"""Streaming files and tensors to the EncoderService: ≤ 1 MiB messages, multipart for big files."""

from __future__ import annotations

import asyncio
import mimetypes
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypedDict, TypeVar, Unpack

import grpc

from ferry.keywords import check_keywords
from ferry.request_scope import current_scope
from ferry.retry import call_with_retries, call_with_retries_async
from ferry.sizes import MESSAGE_BYTES, MIB
from ferry.tensors import TensorPayload, tensor_payload
from ferry.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

MULTIPART_THRESHOLD = 100 * MIB
PART_BYTES = 10 * MIB
PARALLEL_PARTS = 10

UploadProgress = Callable[[int, int], None]  # (bytes sent, total)
M = TypeVar("M")
Choice = TypeVar("Choice")  # a protobuf enum's ValueType


def lifecycle(expires_in: int | None) -> common_pb2.Lifecycle:
    """`expires_in` seconds; None = the current request's preference inside a handler, else the store's default."""
    if expires_in is None:
        expires_in = current_scope().expires_in
    return common_pb2.Lifecycle(expiration_seconds=expires_in) if expires_in is not None else common_pb2.Lifecycle()


# Where Python's table names a legacy `x-` type and browsers and the encoder use the registered one.
_REGISTERED_TYPES = {".wav": "audio/wav", ".mkv": "video/matroska"}


def guess_content_type(file_name: str, given: str | None) -> str:
    """`given`, else the type the file name's extension names, else application/octet-stream."""
    if given:
        return given
    extension = Path(file_name).suffix.lower()
    return _REGISTERED_TYPES.get(extension) or mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def read_chunks(file: BinaryIO, length: int, on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        chunk = file.read(min(MESSAGE_BYTES, remaining))
        if not chunk:
            raise OSError(f"file ended {remaining} bytes early (changed while uploading?)")
        remaining -= len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
        yield chunk


def upload_messages(
    header: encoder_pb2.UploadHeader, path: Path | None, data: bytes | None, on_bytes: Callable[[int], None] | None
) -> Iterator[encoder_pb2.UploadRequest]:
    """Header, then the file's (or `data`'s) bytes; re-iterable by calling again, for retries."""
    yield encoder_pb2.UploadRequest(header=header)
    if data is not None:
        for offset in range(0, len(data), MESSAGE_BYTES):
            chunk = data[offset : offset + MESSAGE_BYTES]
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield encoder_pb2.UploadRequest(chunk=chunk)
        return
    assert path is not None
    with open(path, "rb") as file:
        for chunk in read_chunks(file, header.file_size, on_bytes):
            yield encoder_pb2.UploadRequest(chunk=chunk)


async def upload_messages_async(
    header: encoder_pb2.UploadHeader, path: Path | None, data: bytes | None, on_bytes: Callable[[int], None] | None
) -> AsyncIterator[encoder_pb2.UploadRequest]:
    """The asyncio twin of `upload_messages`: the file is read in a thread, off the event loop."""
    if path is None:
        for message in upload_messages(header, None, data, on_bytes):
            yield message
        return
    yield encoder_pb2.UploadRequest(header=header)
    async for chunk in _read_chunks_async(path, 0, header.file_size, on_bytes):
        yield encoder_pb2.UploadRequest(chunk=chunk)


async def _read_chunks_async(
    path: Path, offset: int, length: int, on_bytes: Callable[[int], None] | None
) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(file.seek, offset)
        chunks = read_chunks(file, length, on_bytes)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        await asyncio.to_thread(file.close)


def part_messages(
    upload_id: str, part_number: int, path: Path, offset: int, length: int, on_bytes: Callable[[int], None] | None
) -> Iterator[encoder_pb2.UploadPartRequest]:
    yield encoder_pb2.UploadPartRequest(
        header=encoder_pb2.UploadPartHeader(upload_id=upload_id, part_number=part_number)
    )
    with open(path, "rb") as file:
        file.seek(offset)
        for chunk in read_chunks(file, length, on_bytes):
            yield encoder_pb2.UploadPartRequest(chunk=chunk)


async def part_messages_async(
    upload_id: str, part_number: int, path: Path, offset: int, length: int, on_bytes: Callable[[int], None] | None
) -> AsyncIterator[encoder_pb2.UploadPartRequest]:
    yield encoder_pb2.UploadPartRequest(
        header=encoder_pb2.UploadPartHeader(upload_id=upload_id, part_number=part_number)
    )
    async for chunk in _read_chunks_async(path, offset, length, on_bytes):
        yield encoder_pb2.UploadPartRequest(chunk=chunk)


def part_ranges(size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) of each 10 MiB part."""
    return [
        (index + 1, offset, min(PART_BYTES, size - offset)) for index, offset in enumerate(range(0, size, PART_BYTES))
    ]


class RequestStream(Generic[M]):
    """A call's request messages that remember the exception they failed with.

    gRPC reports a request iterator that raised as a cancelled call (UNKNOWN
    in sync code, `asyncio.CancelledError` under asyncio), which hides why;
    `raise_cause` re-raises the real reason (a file that shrank while it was
    uploading: OSError), so both twins say the same thing.
    """

    def __init__(self, messages: Iterator[M] | AsyncIterator[M]) -> None:
        self.messages = messages
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[M]:
        assert isinstance(self.messages, Iterator)
        try:
            yield from self.messages
        except Exception as error:
            self.error = error
            raise

    async def __aiter__(self) -> AsyncIterator[M]:
        assert isinstance(self.messages, AsyncIterator)
        try:
            async for message in self.messages:
                yield message
        except Exception as error:
            self.error = error
            raise

    def raise_cause(self) -> None:
        """Within an `except` for the failed call: raise the messages' own error instead, if they failed."""
        task = asyncio.current_task() if _in_event_loop() else None
        if self.error is not None and (task is None or not task.cancelling()):
            raise self.error from None


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class PartProgress:
    """Bytes sent of a multipart upload, summed over its parts; a retried part starts over."""

    def __init__(self, size: int, on_progress: UploadProgress | None) -> None:
        self.size = size
        self.on_progress = on_progress
        self._sent: dict[int, int] = {}

    def restart(self, number: int) -> None:
        self._sent[number] = 0

    def counter(self, number: int) -> Callable[[int], None]:
        def count(sent: int) -> None:
            self._sent[number] += sent
            if self.on_progress is not None:
                self.on_progress(sum(self._sent.values()), self.size)

        return count


@dataclass(eq=False)
class _Parts:
    """One multipart upload's parts: where each lies in the file, and the progress summed over them."""

    stub: encoder_pb2_grpc.EncoderServiceStub
    upload_id: str
    path: Path
    size: int
    on_progress: UploadProgress | None

    def __post_init__(self) -> None:
        self.ranges = part_ranges(self.size)
        self.progress = PartProgress(self.size, self.on_progress)


def _part_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="ferry-part")


@dataclass(eq=False)
class PartSender(_Parts):
    """Sends a file's parts, up to PARALLEL_PARTS at once, each retried; `cancel` stops every call in flight.

    Calls are futures so a Ctrl-C in the caller's thread can cancel them: a
    blocking call on a worker thread could not be interrupted.
    """

    _calls: set[grpc.Future[encoder_pb2.UploadPartResponse]] = field(default_factory=set, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopped: threading.Event = field(default_factory=threading.Event, init=False)
    _pool: ThreadPoolExecutor = field(default_factory=_part_pool, init=False)

    def _attempt(
        self, stub: encoder_pb2_grpc.EncoderServiceStub, number: int, offset: int, length: int
    ) -> encoder_pb2.UploadPartResponse:
        if self._stopped.is_set():
            raise RuntimeError("upload cancelled")
        self.progress.restart(number)
        messages = RequestStream(
            part_messages(self.upload_id, number, self.path, offset, length, self.progress.counter(number))
        )
        call = stub.UploadPart.future(iter(messages))
        with self._lock:
            self._calls.add(call)
        try:
            return call.result()
        except grpc.RpcError:
            messages.raise_cause()
            raise
        finally:
            with self._lock:
                self._calls.discard(call)

    def _send(self, number: int, offset: int, length: int) -> encoder_pb2.CompletedPart:
        response = call_with_retries([self.stub], lambda s: self._attempt(s, number, offset, length), idempotent=True)
        return encoder_pb2.CompletedPart(part_number=response.part_number, etag=response.etag)

    def send_all(self) -> list[encoder_pb2.CompletedPart]:
        futures = [self._pool.submit(self._send, *part) for part in self.ranges]
        try:
            return [future.result() for future in futures]  # interruptible: Ctrl-C lands here
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def cancel(self) -> None:
        self._stopped.set()
        with self._lock:
            for call in self._calls:
                call.cancel()


class AsyncPartSender(_Parts):
    """The asyncio twin of `PartSender`: a task per part, PARALLEL_PARTS at a time; cancelling cancels them all."""

    stub: encoder_pb2_grpc.EncoderServiceAsyncStub

    async def _attempt(
        self, stub: encoder_pb2_grpc.EncoderServiceAsyncStub, number: int, offset: int, length: int
    ) -> encoder_pb2.UploadPartResponse:
        self.progress.restart(number)
        messages = RequestStream(
            part_messages_async(self.upload_id, number, self.path, offset, length, self.progress.counter(number))
        )
        try:
            return await stub.UploadPart(aiter(messages))
        except (grpc.RpcError, asyncio.CancelledError):
            messages.raise_cause()
            raise

    async def send_all(self) -> list[encoder_pb2.CompletedPart]:
        slots = asyncio.Semaphore(PARALLEL_PARTS)

        async def send(number: int, offset: int, length: int) -> encoder_pb2.CompletedPart:
            async with slots:
                response = await call_with_retries_async(
                    [self.stub], lambda s: self._attempt(s, number, offset, length), idempotent=True
                )
            return encoder_pb2.CompletedPart(part_number=response.part_number, etag=response.etag)

        tasks = [asyncio.ensure_future(send(*part)) for part in self.ranges]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()  # after a failure (or our own cancellation), the others stop too
            await asyncio.gather(*tasks, return_exceptions=True)


def encode_messages(
    header: encoder_pb2.EncodeHeader, payload: TensorPayload, audio: TensorPayload | None
) -> Iterator[encoder_pb2.EncodeRequest]:
    yield encoder_pb2.EncodeRequest(header=header)
    for chunk in payload.chunks(MESSAGE_BYTES):
        yield encoder_pb2.EncodeRequest(chunk=bytes(chunk))
    if audio is not None:
        for chunk in audio.chunks(MESSAGE_BYTES):
            yield encoder_pb2.EncodeRequest(audio_chunk=bytes(chunk))


FORMATS = {
    "png": encoder_pb2.MEDIA_FORMAT_PNG,
    "jpeg": encoder_pb2.MEDIA_FORMAT_JPEG,
    "jpg": encoder_pb2.MEDIA_FORMAT_JPEG,
    "webp": encoder_pb2.MEDIA_FORMAT_WEBP,
    "gif": encoder_pb2.MEDIA_FORMAT_GIF,
    "mp4": encoder_pb2.MEDIA_FORMAT_MP4,
    "wav": encoder_pb2.MEDIA_FORMAT_WAV,
}
CHANNEL_ORDERS = {
    None: encoder_pb2.CHANNEL_ORDER_UNSPECIFIED,
    "last": encoder_pb2.CHANNEL_ORDER_LAST,
    "first": encoder_pb2.CHANNEL_ORDER_FIRST,
}
VALUE_RANGES = {
    None: encoder_pb2.VALUE_RANGE_UNSPECIFIED,
    "0,1": encoder_pb2.VALUE_RANGE_ZERO_TO_ONE,
    "-1,1": encoder_pb2.VALUE_RANGE_MINUS_ONE_TO_ONE,
}
SAMPLE_FORMATS = {"pcm16": encoder_pb2.AUDIO_SAMPLE_FORMAT_PCM16, "float32": encoder_pb2.AUDIO_SAMPLE_FORMAT_FLOAT32}


def _choice(table: Mapping[Any, Choice], value: Any, what: str) -> Choice:
    try:
        return table[value]
    except KeyError:
        raise ValueError(
            f"unknown {what} {value!r}; choose from {', '.join(str(k) for k in table if k is not None)}"
        ) from None


def encode_header(
    payload: TensorPayload, format: str, options: EncodeOptions, audio_payload: TensorPayload | None
) -> encoder_pb2.EncodeHeader:
    """The Encode stream's header: each option read once, with its default where it is read."""
    media = _choice(FORMATS, format.lower(), "format")
    header = encoder_pb2.EncodeHeader(
        tensor=payload.header,
        format=media,
        channel_order=_choice(CHANNEL_ORDERS, options.get("channel_order"), "channel order"),
        file_name=options.get("file_name", ""),
        lifecycle=lifecycle(options.get("expires_in")),
        output_key=options.get("output_key", ""),
    )
    value = _choice(VALUE_RANGES, options.get("value_range"), "value range")
    if media == encoder_pb2.MEDIA_FORMAT_MP4:
        video = encoder_pb2.VideoOptions(
            fps=options.get("fps") or 24.0,
            preset=options.get("preset", ""),
            value_range=value,
            # Allowed: h264_nvenc when the server has a CUDA device, else libx264.
            codec_preference=(
                encoder_pb2.VIDEO_CODEC_PREFERENCE_GPU_IF_AVAILABLE
                if options.get("allow_gpu", True)
                else encoder_pb2.VIDEO_CODEC_PREFERENCE_CPU
            ),
        )
        if (crf := options.get("crf")) is not None:
            video.crf = crf
        if (audio := options.get("audio")) is not None and audio_payload is not None:
            video.audio_track.CopyFrom(encoder_pb2.AudioTrack(tensor=audio_payload.header, sample_rate=audio[1]))
        header.video.CopyFrom(video)
    elif media == encoder_pb2.MEDIA_FORMAT_WAV:
        header.audio.CopyFrom(
            encoder_pb2.AudioOptions(
                sample_rate=options.get("sample_rate", 0),
                sample_format=_choice(SAMPLE_FORMATS, options.get("sample_format", "pcm16"), "sample format"),
            )
        )
    else:
        image = encoder_pb2.ImageOptions(
            lossless=options.get("lossless", False),
            value_range=value,
            animate=options.get("animate", False),
            frame_duration_ms=options.get("frame_duration_ms", 0),
            loop=options.get("loop", 0),
        )
        if (quality := options.get("quality")) is not None:
            image.quality = quality
        if (png_compress_level := options.get("png_compress_level")) is not None:
            image.png_compress_level = png_compress_level
        header.image.CopyFrom(image)
    return header


class UploadOptions(TypedDict, total=False):
    """`upload_file`'s keywords: the stored file's type and name (else guessed from the path), its lifetime in
    seconds (None: the store's default), and `on_progress(bytes_sent, total)` as the bytes go."""

    content_type: str | None
    file_name: str | None
    expires_in: int | None
    on_progress: UploadProgress | None


class EncodeOptions(TypedDict, total=False):
    """The keywords `encode_tensor` (and `Image.from_tensor`, …) take; `encode_header` reads each with its default."""

    file_name: str
    expires_in: int | None
    channel_order: str | None  # "last" (HWC) or "first" (CHW), when the shape cannot tell
    value_range: str | None  # floats in "0,1" (default) or "-1,1"
    quality: int | None  # jpeg / webp, 1-100
    lossless: bool  # webp
    png_compress_level: int | None  # 0-9
    animate: bool  # a batch as one animated gif / webp
    frame_duration_ms: int
    loop: int
    fps: float  # mp4 (required)
    crf: int | None
    preset: str
    allow_gpu: bool  # h264_nvenc when the server has a CUDA device
    audio: tuple[Any, int] | None  # (samples, sample_rate): an mp4's audio track
    sample_rate: int  # wav (required)
    sample_format: str  # wav: "pcm16" or "float32"
    # Encoding again with the same key replaces the files stored before rather than adding new ones (the
    # runner's own: request id and output field). The key decides the URL: make it unguessable.
    output_key: str


def build_encode(
    tensor: Any, format: str, **options: Unpack[EncodeOptions]
) -> tuple[encoder_pb2.EncodeHeader, TensorPayload, TensorPayload | None]:
    """The Encode stream's header and payloads: the one place encode options are understood."""
    check_keywords("encode_tensor", options, EncodeOptions)
    payload = tensor_payload(tensor)
    audio = options.get("audio")
    audio_payload = tensor_payload(audio[0]) if audio is not None else None
    return encode_header(payload, format, options, audio_payload), payload, audio_payload
