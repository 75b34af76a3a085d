"""How the runner reaches the DownloaderService and the EncoderService: the SDK's AsyncClient.

The launcher points `FERRY_ADDRESS` at the downloader and
`FERRY_ENCODER_ADDRESSES` at the encoder(s) (this server itself in the embedded
stack, `--downloader` / `--encoder` otherwise) once its port is known — after
the apps' `setup()` ran — so the client opens on first use, not at start.
"""

from __future__ import annotations

from ferry.client import AsyncClient


class ServiceClients:
    """One AsyncClient, opened lazily on the runner's loop: downloads from FERRY_ADDRESS, encodes on the encoders."""

    def __init__(self) -> None:
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
