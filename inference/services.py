"""How the runner reaches the DownloaderService and the EncoderService: the SDK's AsyncClient.

The launcher hands the runner the stack it lives in (`StackTarget`: this
server itself in the embedded stack, `--downloader` / `--encoder` otherwise);
the runner's own client and the apps' SDK calls (through the request scope,
`setup()` included) go there. The client opens on first use, on the runner's loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Unpack

from ferry.client import AsyncClient
from ferry.connection import StackTarget
from ferry.uploads import EncodeOptions
from ferry.v1 import common_pb2


class Upstream(Protocol):
    """What the runner calls on the stack's services (an AsyncClient): the seam its in-process tests fake."""

    async def download_file(self, url: str) -> Path: ...

    async def encode_tensor(
        self, tensor: Any, format: str, **options: Unpack[EncodeOptions]
    ) -> list[common_pb2.File]: ...


class ServiceClients:
    """One AsyncClient for `target`, opened lazily on the runner's loop (no target: FERRY_ADDRESS and friends)."""

    def __init__(self, target: StackTarget | None = None) -> None:
        self.target = target or StackTarget.from_environment()
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            connection = self.target.connection
            self._client = AsyncClient(
                connection.address,
                token=connection.token,
                ca_file=connection.ca_file,
                tls=connection.tls,
                encoder_addresses=self.target.encoder_addresses,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
