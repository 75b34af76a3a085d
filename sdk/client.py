"""`ferry.Client` and `ferry.AsyncClient`: one connection to a ferry stack, with typed stubs.

Both share `Connection` (address, token, TLS); the sync client wraps a
`grpc.Channel`, the async one a `grpc.aio.Channel`. The generated stubs are
exposed as-is (`client.downloader.Download(...)`) for callers who want the raw
contract; the task-level helpers build on them.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.connection import Connection
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
    ) -> None:
        self.connection = Connection.resolve(address, token=token, ca_file=ca_file, tls=tls)
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
    ) -> None:
        self.connection = Connection.resolve(address, token=token, ca_file=ca_file, tls=tls)
        self.channel = self.connection.aio_channel()
        self.downloader = downloader_pb2_grpc.DownloaderServiceStub(self.channel)
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self.channel)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return _status_name(response)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
