"""EncoderService: maps `Encode` and the upload RPCs onto the engines; raised errors become statuses in the interceptor.

Each RPC copies its protobuf into the engine's own dataclasses (request.py,
uploads.py), hands the stream's chunks on as they arrive, and turns what the
engine returns into protobuf. Every decision is the engine's (engine.py,
spec.py, uploads.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from ferry.client import STORAGE_HEALTH_PREFIX
from ferry.errors import InvalidArgument
from ferry.services.config import StackConfig
from ferry.services.encoder.audio import AudioInfo
from ferry.services.encoder.engine import EncodedFile, Encoder, ImageSize
from ferry.services.encoder.request import (
    AudioChunk,
    AudioOptions,
    AudioTrack,
    Chunk,
    EncodeHeader,
    ImageOptions,
    TensorChunk,
    TensorHeader,
    VideoOptions,
)
from ferry.services.encoder.uploads import UploadHeader, Uploads
from ferry.services.health import NOT_SERVING, SERVING
from ferry.services.lifecycle import expires_in
from ferry.services.rpc_context import RpcContext
from ferry.services.runtime import Hosted, Runtime
from ferry.services.storage.base import StoredObject
from ferry.services.storage.chain import StorageChain
from ferry.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

# -- protobuf → engine ------------------------------------------------------------------------


async def _first_header(requests: AsyncIterator[Any], what: str) -> Any:
    """The header a client stream must open with (`what` names it in the error)."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("message") != "header":
        raise InvalidArgument(f"the first message must be {what}", reason="MISSING_HEADER")
    return first.header


def _tensor_header(message: common_pb2.TensorHeader) -> TensorHeader:
    return TensorHeader(dtype=message.dtype, shape=tuple(message.shape))


def _options(header: encoder_pb2.EncodeHeader) -> ImageOptions | VideoOptions | AudioOptions | None:
    kind = header.WhichOneof("options")
    if kind == "image":
        image = header.image
        return ImageOptions(
            quality=image.quality if image.HasField("quality") else None,
            lossless=image.lossless,
            png_compress_level=image.png_compress_level if image.HasField("png_compress_level") else None,
            value_range=image.value_range,
            animate=image.animate,
            frame_duration_ms=image.frame_duration_ms,
            loop=image.loop,
        )
    if kind == "video":
        video = header.video
        return VideoOptions(
            fps=video.fps,
            crf=video.crf if video.HasField("crf") else None,
            preset=video.preset,
            codec_preference=video.codec_preference,
            odd_size_policy=video.odd_size_policy,
            value_range=video.value_range,
            audio_track=_audio_track(video),
        )
    if kind == "audio":
        return AudioOptions(sample_rate=header.audio.sample_rate, sample_format=header.audio.sample_format)
    return None


def _audio_track(video: encoder_pb2.VideoOptions) -> AudioTrack | None:
    if not video.HasField("audio_track"):
        return None
    return AudioTrack(_tensor_header(video.audio_track.tensor), video.audio_track.sample_rate)


def _encode_header(header: encoder_pb2.EncodeHeader) -> EncodeHeader:
    return EncodeHeader(
        tensor=_tensor_header(header.tensor),
        format=header.format,
        channel_order=header.channel_order,
        options=_options(header),
        file_name=header.file_name,
        output_key=header.output_key,
    )


def _chunk(request: encoder_pb2.EncodeRequest) -> Chunk:
    kind = request.WhichOneof("message")
    if kind == "chunk":
        return TensorChunk(request.chunk)  # read once: each read of a bytes field copies it out of the message
    if kind == "audio_chunk":
        return AudioChunk(request.audio_chunk)
    raise InvalidArgument(
        f"only chunks may follow the header, not {kind or 'an empty message'}", reason="UNEXPECTED_MESSAGE"
    )


async def _bytes(
    requests: AsyncIterator[encoder_pb2.UploadRequest | encoder_pb2.UploadPartRequest],
) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("message") != "chunk":
            raise InvalidArgument("only chunks may follow the header", reason="UNEXPECTED_MESSAGE")
        yield request.chunk


# -- engine → protobuf ------------------------------------------------------------------------


def _file(stored: StoredObject) -> common_pb2.File:
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


def _encoded_file(encoded: EncodedFile) -> common_pb2.File:
    message, media = _file(encoded.stored), encoded.media
    if isinstance(media, ImageSize):
        message.image.CopyFrom(common_pb2.ImageInfo(width=media.width, height=media.height))
    elif isinstance(media, AudioInfo):
        message.audio.CopyFrom(
            common_pb2.AudioInfo(
                sample_rate=media.sample_rate,
                channels=media.channels,
                duration_seconds=media.duration_seconds,
                sample_count=media.sample_count,
            )
        )
    else:
        message.video.CopyFrom(
            common_pb2.VideoInfo(
                width=media.width,
                height=media.height,
                fps=media.fps,
                frame_count=media.frame_count,
                duration_seconds=media.duration_seconds,
                has_audio=media.has_audio,
            )
        )
    return message


# -- the service ------------------------------------------------------------------------------


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, encoder: Encoder, uploads: Uploads) -> None:
        self.encoder = encoder
        self.uploads = uploads

    async def Encode(
        self, request_iterator: AsyncIterator[encoder_pb2.EncodeRequest], context: RpcContext
    ) -> encoder_pb2.EncodeResponse:
        header = await _first_header(request_iterator, "the header")
        spec = self.encoder.spec(_encode_header(header))
        lifetime = expires_in(header.lifecycle, context)
        files = await self.encoder.encode(spec, (_chunk(request) async for request in request_iterator), lifetime)
        return encoder_pb2.EncodeResponse(files=[_encoded_file(encoded) for encoded in files])

    async def Upload(
        self, request_iterator: AsyncIterator[encoder_pb2.UploadRequest], context: RpcContext
    ) -> encoder_pb2.UploadResponse:
        header = await _first_header(request_iterator, "the header")
        declared = header.file_size if header.HasField("file_size") else None
        upload = UploadHeader(file_name=header.file_name, content_type=header.content_type, file_size=declared)
        lifetime = expires_in(header.lifecycle, context)
        stored = await self.uploads.upload(upload, _bytes(request_iterator), lifetime)
        return encoder_pb2.UploadResponse(file=_file(stored))

    async def CreateUpload(
        self, request: encoder_pb2.CreateUploadRequest, context: RpcContext
    ) -> encoder_pb2.CreateUploadResponse:
        lifetime = expires_in(request.lifecycle, context)
        upload_id = await self.uploads.create(request.file_name, request.content_type, lifetime)
        return encoder_pb2.CreateUploadResponse(upload_id=upload_id)

    async def UploadPart(
        self, request_iterator: AsyncIterator[encoder_pb2.UploadPartRequest], context: RpcContext
    ) -> encoder_pb2.UploadPartResponse:
        header = await _first_header(request_iterator, "the part header")
        part = await self.uploads.put_part(header.upload_id, header.part_number, _bytes(request_iterator))
        return encoder_pb2.UploadPartResponse(part_number=part.part_number, etag=part.etag, part_size=part.size)

    async def CompleteUpload(
        self, request: encoder_pb2.CompleteUploadRequest, context: RpcContext
    ) -> encoder_pb2.CompleteUploadResponse:
        parts = [(part.part_number, part.etag) for part in request.parts]
        stored = await self.uploads.complete(request.upload_id, parts)
        return encoder_pb2.CompleteUploadResponse(file=_file(stored))

    async def AbortUpload(
        self, request: encoder_pb2.AbortUploadRequest, context: RpcContext
    ) -> encoder_pb2.AbortUploadResponse:
        await self.uploads.abort(request.upload_id)
        return encoder_pb2.AbortUploadResponse()


# -- hosting ----------------------------------------------------------------------------------


def storage_health_name(backend_name: str) -> str:
    """The health service name under which a storage backend is SERVING, or NOT_SERVING while its breaker is open."""
    return f"{STORAGE_HEALTH_PREFIX}{backend_name}"


async def _report_storage_health(chain: StorageChain, health: Any) -> None:
    """Each backend's breaker as a health status.

    The overall status stays SERVING while another backend takes writes.
    """

    async def report(backend_name: str, serving: bool) -> None:
        await health.set(storage_health_name(backend_name), SERVING if serving else NOT_SERVING)

    for backend in chain.backends:
        await report(backend.name, True)
    chain.watch(report)


async def host(server: grpc.aio.Server, config: StackConfig, runtime: Runtime) -> Hosted:
    """Serve EncoderService on `server` over the stack's storage chain."""
    assert runtime.storage is not None, "the launcher builds storage before hosting the encoder"
    await _report_storage_health(runtime.storage, runtime.health)
    threads = config.encoder.encode_threads or os.cpu_count() or 2
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ferry-encode")
    incoming = config.server.data_dir / ".ferry" / "incoming"
    encoder = Encoder(runtime.storage, config.encoder, incoming, executor, threads, runtime.metrics)
    uploads = Uploads(runtime.storage, incoming, executor, limit=encoder.limits.max_bytes)
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(EncoderServicer(encoder, uploads), server)

    async def close() -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    return Hosted(close)
