"""Everything one `ferry serve` was configured with, handed to each hosted service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from grpc_health.v1.health import aio as health_aio

from ferry.connection import StackTarget
from ferry.services.config import DownloaderConfig, EncoderConfig, InferenceConfig, ServerConfig
from ferry.services.storage.base import Storage
from ferry.services.storage.config import StorageConfig


@dataclass(frozen=True)
class Settings:
    server: ServerConfig
    downloader: DownloaderConfig = field(default_factory=DownloaderConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    storage_config: StorageConfig = field(default_factory=StorageConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Built by the launcher from storage_config once the CDN's URL is known: the encoder writes to it, and
    # the downloader reads the stack's own URLs from it (a downloader alone gets only the S3 backends).
    storage: Storage | None = None
    # The server's grpc.health.v1 servicer, for services that report more statuses than their own.
    health: health_aio.HealthServicer | None = None
    # Where hosted apps reach the downloader and encoder: this server, or --downloader / --encoder.
    upstream: StackTarget | None = None


Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Hosted:
    """What hosting a service leaves the launcher: how to close it, and what to run once the server listens."""

    close: Closer
    # Work that needs the stack itself to answer (an app's setup() downloading weights); `ferry ready` waits for it.
    serving: Callable[[], Awaitable[None]] | None = None
