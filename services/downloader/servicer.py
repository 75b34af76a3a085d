"""DownloaderService: maps `Download` and `Read` onto the engine; raised errors become statuses in the interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from ferry.errors import InvalidArgument
from ferry.services.config import StackConfig
from ferry.services.downloader.engine import Completed, Downloader, DownloadJob, Event, Progress, Started
from ferry.services.downloader.own_storage import OwnStorage
from ferry.services.downloader.reads import ReadHeader
from ferry.services.rpc_context import RpcContext
from ferry.services.runtime import Hosted, Runtime
from ferry.v1 import downloader_pb2, downloader_pb2_grpc


def _job(request: downloader_pb2.DownloadRequest) -> DownloadJob:
    if request.kind not in downloader_pb2.DownloadKind.values():
        raise InvalidArgument(f"unknown download kind {request.kind}", reason="INVALID_KIND")
    if not request.url:
        raise InvalidArgument("url is required", reason="MALFORMED_URL")
    return DownloadJob(
        url=request.url,
        target_dir=request.target_dir,
        force=request.force,
        request_headers=dict(request.request_headers),
        filesize_limit=request.filesize_limit_bytes if request.HasField("filesize_limit_bytes") else None,
        model_weights=request.kind == downloader_pb2.DOWNLOAD_KIND_MODEL_WEIGHTS,
        url_cache=request.kind == downloader_pb2.DOWNLOAD_KIND_CACHE,
    )


def _message(event: Event) -> downloader_pb2.DownloadResponse:
    if isinstance(event, Started):
        return downloader_pb2.DownloadResponse(
            started=downloader_pb2.DownloadStarted(total_bytes=event.total_bytes, file_name=event.file_name)
        )
    if isinstance(event, Progress):
        return downloader_pb2.DownloadResponse(
            progress=downloader_pb2.DownloadProgress(
                bytes_done=event.bytes_done, total_bytes=event.total_bytes, bytes_per_second=event.bytes_per_second
            )
        )
    assert isinstance(event, Completed)
    return downloader_pb2.DownloadResponse(
        completed=downloader_pb2.DownloadCompleted(
            path=str(event.path),
            file_size=event.file_size,
            cache_hit=event.cache_hit,
            content_type=event.content_type,
            file_name=event.file_name,
        )
    )


def _read_message(part: ReadHeader | bytes) -> downloader_pb2.ReadResponse:
    if isinstance(part, ReadHeader):
        return downloader_pb2.ReadResponse(
            header=downloader_pb2.ReadHeader(
                file_size=part.file_size, file_name=part.file_name, content_type=part.content_type
            )
        )
    return downloader_pb2.ReadResponse(chunk=part)


class DownloaderServicer(downloader_pb2_grpc.DownloaderServiceServicer):
    def __init__(self, downloader: Downloader) -> None:
        self.downloader = downloader

    async def Download(
        self, request: downloader_pb2.DownloadRequest, context: RpcContext
    ) -> AsyncIterator[downloader_pb2.DownloadResponse]:
        async for event in self.downloader.download(_job(request)):
            yield _message(event)

    async def Read(
        self, request: downloader_pb2.ReadRequest, context: RpcContext
    ) -> AsyncIterator[downloader_pb2.ReadResponse]:
        length = request.length if request.HasField("length") else None
        # aclosing: a caller that leaves early closes the read now, and its reader lock goes with it.
        async with aclosing(self.downloader.read(request.path, request.offset, length)) as parts:
            async for part in parts:
                yield _read_message(part)


async def host(server: grpc.aio.Server, config: StackConfig, runtime: Runtime) -> Hosted:
    """Serve DownloaderService on `server`."""
    downloader = Downloader(
        config.downloader,
        config.server.data_dir,
        # URLs of the stack's own storage resolve from it where this process can reach it; where it cannot
        # (the encoder runs elsewhere), the stack's CDN as configured is fetched past the network guard.
        own_storage=OwnStorage.of(runtime.storage),
        trusted_cdn_url=config.storage.public_url,
        metrics=runtime.metrics,
    )
    await asyncio.to_thread(downloader.sweep_abandoned_parts)
    # Its first sweep runs now: records and locks of downloads removed while the server was down go at start.
    tidying = asyncio.create_task(downloader.keep_tidy(config.downloader.cache_sweep_seconds))
    downloader_pb2_grpc.add_DownloaderServiceServicer_to_server(DownloaderServicer(downloader), server)

    async def close() -> None:
        tidying.cancel()
        await downloader.close()

    return Hosted(close)
