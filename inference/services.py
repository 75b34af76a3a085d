"""How the runner reaches the DownloaderService and the EncoderService: the SDK's AsyncClient.

The launcher points `FERRY_ADDRESS` at the downloader and
`FERRY_ENCODER_ADDRESSES` at the encoder(s) (this server itself in the embedded
stack, `--downloader` / `--encoder` otherwise) once its port is known — after
the apps' `setup()` ran — so the clients open on first use, not at start.
"""

from __future__ import annotations

import os

from ferry.client import AsyncClient


class ServiceClients:
    """One AsyncClient for downloads and one for encodes, opened lazily on the runner's loop."""

    def __init__(self) -> None:
        self._downloads: AsyncClient | None = None
        self._encodes: AsyncClient | None = None

    @property
    def downloads(self) -> AsyncClient:
        if self._downloads is None:
            self._downloads = AsyncClient()
        return self._downloads

    @property
    def encodes(self) -> AsyncClient:
        if self._encodes is None:
            encoders = [a.strip() for a in os.environ.get("FERRY_ENCODER_ADDRESSES", "").split(",") if a.strip()]
            self._encodes = AsyncClient(encoders[0] if encoders else None)
        return self._encodes

    async def close(self) -> None:
        for client in (self._downloads, self._encodes):
            if client is not None:
                await client.close()
