"""What a running stack hands each service it hosts, beside its configuration.

`host(server, config, runtime)` gets the stack's `StackConfig` (values from
flags and FERRY_* variables) and this: the parts the launcher built once and
services share — storage (written by the encoder, read by the downloader for
the stack's own URLs), the server's health servicer, and where hosted apps
reach the downloader and encoder. Nothing is read from or written to the
environment: two stacks in one process each hand out their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from grpc_health.v1.health import aio as health_aio

from ferry.connection import StackTarget
from ferry.services.metrics import StackMetrics
from ferry.services.storage.chain import StorageChain

Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Runtime:
    health: health_aio.HealthServicer
    # Where hosted apps' downloads and encodes go: this server, or --downloader / --encoder.
    upstream: StackTarget
    # The stack's storage: every backend when the encoder is hosted; a downloader alone gets
    # only the S3 buckets of its --storage settings (local storage is another machine's disk). None: no storage.
    storage: StorageChain | None = None
    # The stack's metrics (scraped at /metrics); a service registers what it reads at scrape time.
    metrics: StackMetrics = field(default_factory=StackMetrics)


@dataclass(frozen=True)
class Hosted:
    """What hosting a service leaves the launcher: how to close it, and what to run once the server listens."""

    close: Closer
    # Work that needs the stack itself to answer (an app's setup() downloading weights); `ferry ready` waits for it.
    serving: Callable[[], Awaitable[None]] | None = None
