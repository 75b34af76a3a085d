"""`ferry.Client` and `ferry.AsyncClient`: one connection to a ferry stack, with typed stubs.

Both share `Connection` (address, token, TLS); the sync client wraps a
`grpc.Channel`, the async one a `grpc.aio.Channel`. The generated stubs are
exposed as-is (`client.downloader.Download(...)`) for callers who want the raw
contract; the task-level helpers build on them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.connection import Connection
from ferry.downloads import DownloadPlan, EventReader, ProgressCallback, write_read_stream, write_read_stream_async
from ferry.errors import FerryError
from ferry.v1 import downloader_pb2_grpc, encoder_pb2_grpc, inference_pb2_grpc

SERVICE_NAMES = ("ferry.v1.DownloaderService", "ferry.v1.EncoderService", "ferry.v1.InferenceService")

_STATUS_NAMES = {value: name for name, value in health_pb2.HealthCheckResponse.ServingStatus.items()}


def _status_name(response: health_pb2.HealthCheckResponse) -> str:
    return _STATUS_NAMES[response.status]


class Client:
    """A synchronous connection to a ferry stack (`FERRY_ADDRESS` unless `address` is given)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        tls: bool | None = None,
        shared_data_dir: bool | None = None,
    ) -> None:
        self.connection = Connection.resolve(address, token=token, ca_file=ca_file, tls=tls)
        self.shared_data_dir = shared_data_dir  # None: FERRY_SHARED_DATA_DIR, else detect per download
        self.channel = self.connection.channel()
        self.downloader = downloader_pb2_grpc.DownloaderServiceStub(self.channel)
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The serving status ("SERVING", "NOT_SERVING", …) of `service` ("" = the whole server)."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return _status_name(response)

    def wait_until_serving(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def download_file(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None = None,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        filesize_limit: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download `url` (http, https or data:) and return the local path.

        `target_dir` relative paths resolve under the service's data dir;
        `filesize_limit` is in MB. Raises `FerryError` with the service's status.
        """
        return self._download(url, target_dir, force, request_headers, filesize_limit, on_progress, model_weights=False)

    def download_model_weights(
        self,
        url: str,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download weights once into the service's weights store; later calls return at once."""
        return self._download(url, None, force, request_headers, None, on_progress, model_weights=True)

    def _download(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None,
        force: bool,
        request_headers: Mapping[str, str] | None,
        filesize_limit: float | None,
        on_progress: ProgressCallback | None,
        model_weights: bool,
    ) -> Path:
        plan = DownloadPlan.create(
            url, target_dir, force, request_headers, filesize_limit, model_weights, self.shared_data_dir
        )
        reader = EventReader(on_progress)
        call = self.downloader.Download(plan.request)
        try:
            for response in call:
                reader.feed(response)
            completed = reader.result()
            if (path := plan.local_path(completed)) is not None:
                return path
            return write_read_stream(self.downloader.Read(plan.read_request(completed)), plan.destination(completed))
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        except BaseException:
            call.cancel()  # Ctrl-C or a failing callback: stop the transfer server-side too
            raise

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of `Client`."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        tls: bool | None = None,
        shared_data_dir: bool | None = None,
    ) -> None:
        self.connection = Connection.resolve(address, token=token, ca_file=ca_file, tls=tls)
        self.shared_data_dir = shared_data_dir
        self.channel = self.connection.aio_channel()
        self.downloader = downloader_pb2_grpc.DownloaderServiceStub(self.channel)
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return _status_name(response)

    async def download_file(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None = None,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        filesize_limit: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """The asyncio twin of `Client.download_file`; cancelling the task cancels the transfer."""
        return await self._download(url, target_dir, force, request_headers, filesize_limit, on_progress, False)

    async def download_model_weights(
        self,
        url: str,
        force: bool = False,
        request_headers: Mapping[str, str] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        return await self._download(url, None, force, request_headers, None, on_progress, True)

    async def _download(
        self,
        url: str,
        target_dir: str | os.PathLike[str] | None,
        force: bool,
        request_headers: Mapping[str, str] | None,
        filesize_limit: float | None,
        on_progress: ProgressCallback | None,
        model_weights: bool,
    ) -> Path:
        plan = DownloadPlan.create(
            url, target_dir, force, request_headers, filesize_limit, model_weights, self.shared_data_dir
        )
        reader = EventReader(on_progress)
        try:
            async for response in self.downloader.Download(plan.request):
                reader.feed(response)
            completed = reader.result()
            if (path := plan.local_path(completed)) is not None:
                return path
            read = self.downloader.Read(plan.read_request(completed))
            return await write_read_stream_async(read, plan.destination(completed))
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
