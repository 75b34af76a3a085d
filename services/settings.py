"""Everything one `ferry serve` was configured with, handed to each hosted service."""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry.services.config import DownloaderConfig, ServerConfig


@dataclass(frozen=True)
class Settings:
    server: ServerConfig
    downloader: DownloaderConfig = field(default_factory=DownloaderConfig)
