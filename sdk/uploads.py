"""Streaming files and tensors to the EncoderService: ≤ 1 MiB messages, multipart for big files."""

from __future__ import annotations

import mimetypes
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from ferry.request_scope import current_scope
from ferry.retry import call_with_retries
from ferry.tensors import TensorPayload, tensor_payload
from ferry.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

MIB = 1 << 20
MESSAGE_BYTES = MIB  # the contract's largest data message
MULTIPART_THRESHOLD = 100 * MIB
PART_BYTES = 10 * MIB
PARALLEL_PARTS = 10

UploadProgress = Callable[[int, int], None]  # (bytes sent, total)


def lifecycle(expires_in: int | None) -> common_pb2.Lifecycle:
    """`expires_in` seconds; None = the current request's preference inside a handler, else the store's default."""
    if expires_in is None:
        expires_in = current_scope().expires_in
    return common_pb2.Lifecycle(expiration_seconds=expires_in) if expires_in is not None else common_pb2.Lifecycle()


def guess_content_type(file_name: str, given: str | None) -> str:
    return given or mimetypes.guess_type(file_name)[0] or "application/octet-stream"


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


def part_messages(
    upload_id: str, part_number: int, path: Path, offset: int, length: int, on_bytes: Callable[[int], None] | None
) -> Iterator[encoder_pb2.UploadPartRequest]:
    yield encoder_pb2.UploadPartRequest(header=encoder_pb2.UploadPartHeader(upload_id=upload_id, part_number=part_number))
    with open(path, "rb") as file:
        file.seek(offset)
        for chunk in read_chunks(file, length, on_bytes):
            yield encoder_pb2.UploadPartRequest(chunk=chunk)


def part_ranges(size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) of each 10 MiB part."""
    return [(index + 1, offset, min(PART_BYTES, size - offset)) for index, offset in enumerate(range(0, size, PART_BYTES))]


class PartSender:
    """Sends a file's parts, up to PARALLEL_PARTS at once, each retried; `cancel` stops every call in flight.

    Calls are futures so a Ctrl-C in the caller's thread can cancel them: a
    blocking call on a worker thread could not be interrupted.
    """

    def __init__(
        self, stub: encoder_pb2_grpc.EncoderServiceStub, upload_id: str, path: Path, size: int, on_progress: UploadProgress | None
    ) -> None:
        self.stub, self.upload_id, self.path, self.size = stub, upload_id, path, size
        self.on_progress = on_progress
        self.ranges = part_ranges(size)
        self._sent = [0] * (len(self.ranges) + 1)
        self._calls: set[grpc.Future] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="ferry-part")

    def _progressed(self, number: int, count: int) -> None:
        self._sent[number] += count
        if self.on_progress is not None:
            self.on_progress(sum(self._sent), self.size)

    def _attempt(self, stub: encoder_pb2_grpc.EncoderServiceStub, number: int, offset: int, length: int) -> encoder_pb2.UploadPartResponse:
        if self._stopped.is_set():
            raise RuntimeError("upload cancelled")
        self._sent[number] = 0  # a retried part starts over
        messages = part_messages(self.upload_id, number, self.path, offset, length, lambda n: self._progressed(number, n))
        call = stub.UploadPart.future(messages)
        with self._lock:
            self._calls.add(call)
        try:
            return call.result()
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


def encode_messages(header: encoder_pb2.EncodeHeader, payload: TensorPayload, audio: TensorPayload | None) -> Iterator[encoder_pb2.EncodeRequest]:
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
CHANNEL_ORDERS = {None: encoder_pb2.CHANNEL_ORDER_UNSPECIFIED, "last": encoder_pb2.CHANNEL_ORDER_LAST, "first": encoder_pb2.CHANNEL_ORDER_FIRST}
VALUE_RANGES = {None: encoder_pb2.VALUE_RANGE_UNSPECIFIED, "0,1": encoder_pb2.VALUE_RANGE_ZERO_TO_ONE, "-1,1": encoder_pb2.VALUE_RANGE_MINUS_ONE_TO_ONE}
SAMPLE_FORMATS = {"pcm16": encoder_pb2.AUDIO_SAMPLE_FORMAT_PCM16, "float32": encoder_pb2.AUDIO_SAMPLE_FORMAT_FLOAT32}


def _choice(table: dict[Any, int], value: Any, what: str) -> int:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(str(k) for k in table if k is not None)}") from None


def encode_header(
    payload: TensorPayload,
    format: str,
    *,
    file_name: str,
    expires_in: int | None,
    channel_order: str | None,
    value_range: str | None,
    audio_payload: TensorPayload | None,
    options: dict[str, Any],
) -> encoder_pb2.EncodeHeader:
    media = _choice(FORMATS, format.lower(), "format")
    header = encoder_pb2.EncodeHeader(
        tensor=payload.header,
        format=media,
        channel_order=_choice(CHANNEL_ORDERS, channel_order, "channel order"),
        file_name=file_name,
        lifecycle=lifecycle(expires_in),
    )
    value = _choice(VALUE_RANGES, value_range, "value range")
    if media == encoder_pb2.MEDIA_FORMAT_MP4:
        video = encoder_pb2.VideoOptions(
            fps=options["fps"] or 24.0,
            preset=options["preset"],
            value_range=value,
            # Allowed: h264_nvenc when the server has a CUDA device, else libx264.
            codec_preference=(
                encoder_pb2.VIDEO_CODEC_PREFERENCE_GPU_IF_AVAILABLE if options["allow_gpu"] else encoder_pb2.VIDEO_CODEC_PREFERENCE_CPU
            ),
        )
        if options["crf"] is not None:
            video.crf = options["crf"]
        if audio_payload is not None:
            video.audio_track.CopyFrom(encoder_pb2.AudioTrack(tensor=audio_payload.header, sample_rate=options["audio_rate"]))
        header.video.CopyFrom(video)
    elif media == encoder_pb2.MEDIA_FORMAT_WAV:
        header.audio.CopyFrom(
            encoder_pb2.AudioOptions(
                sample_rate=options["sample_rate"], sample_format=_choice(SAMPLE_FORMATS, options["sample_format"], "sample format")
            )
        )
    else:
        image = encoder_pb2.ImageOptions(
            lossless=options["lossless"],
            value_range=value,
            animate=options["animate"],
            frame_duration_ms=options["frame_duration_ms"],
            loop=options["loop"],
        )
        if options["quality"] is not None:
            image.quality = options["quality"]
        if options["png_compress_level"] is not None:
            image.png_compress_level = options["png_compress_level"]
        header.image.CopyFrom(image)
    return header


def build_encode(
    tensor: Any,
    format: str,
    *,
    file_name: str = "",
    expires_in: int | None = None,
    channel_order: str | None = None,
    value_range: str | None = None,
    quality: int | None = None,
    lossless: bool = False,
    png_compress_level: int | None = None,
    animate: bool = False,
    frame_duration_ms: int = 0,
    loop: int = 0,
    fps: float = 0,
    crf: int | None = None,
    preset: str = "",
    allow_gpu: bool = True,
    audio: tuple[Any, int] | None = None,
    sample_rate: int = 0,
    sample_format: str = "pcm16",
) -> tuple[encoder_pb2.EncodeHeader, TensorPayload, TensorPayload | None]:
    """The Encode stream's header and payloads: the one place encode options are understood."""
    payload = tensor_payload(tensor)
    audio_payload = tensor_payload(audio[0]) if audio is not None else None
    header = encode_header(
        payload,
        format,
        file_name=file_name,
        expires_in=expires_in,
        channel_order=channel_order,
        value_range=value_range,
        audio_payload=audio_payload,
        options=dict(
            quality=quality,
            lossless=lossless,
            png_compress_level=png_compress_level,
            animate=animate,
            frame_duration_ms=frame_duration_ms,
            loop=loop,
            fps=fps,
            crf=crf,
            preset=preset,
            allow_gpu=allow_gpu,
            audio_rate=audio[1] if audio is not None else 0,
            sample_rate=sample_rate,
            sample_format=sample_format,
        ),
    )
    return header, payload, audio_payload
