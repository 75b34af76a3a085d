"""A fake of the runner's service-clients seam (`ferry.inference.services.ServiceClients`), in memory.

The runner reaches the DownloaderService and the EncoderService through
`ServiceClients.client`, an `AsyncClient` of which it calls two methods:
`download_file(url)` for each media input (`inference/inputs.py`) and
`encode_tensor(tensor, format, **options)` for each tensor a handler leaves in
a media output field (`inference/outputs.py`). `ServiceClients.target` only
travels into the request scope (where an app's own SDK calls would go; the
fake's names an address nothing listens on). This fake answers the two calls
the way the real services do: a download lands in a fresh folder of its own,
which the runner deletes when the request is over; an encode answers
`ferry.v1.File` messages; a refusal is the `ferry.errors` class the SDK raises.

A test serves or refuses URLs, holds a download or every encode until it lets
go, and reads back what was asked, in order, from `timeline` — a list the test
shares with its app's handlers, so one list tells what happened when.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.connection import Connection, StackTarget
from ferry.errors import FerryError, NotFound
from ferry.inference.outputs import is_tensor
from ferry.v1 import common_pb2

# An address in a reserved TLD: nothing answers it, so an app's stray SDK call fails instead of reaching a stack.
NOWHERE = StackTarget(Connection("fake-stack.invalid:1"))
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class Encode:
    """One `encode_tensor` call as the fake received it."""

    shape: tuple[int, ...]
    format: str
    options: dict[str, Any]


class FakeClient:
    """`download_file` and `encode_tensor`, answered from memory."""

    def __init__(self, downloads_dir: Path, timeline: list[str]) -> None:
        self.timeline = timeline
        self.encodes: list[Encode] = []
        self._downloads_dir = downloads_dir
        self._sources: dict[str, bytes] = {}
        self._refusals: dict[str, FerryError] = {}
        self._held: dict[str, asyncio.Event] = {}
        self._encodes_held: asyncio.Event | None = None
        self._encode_refusal: FerryError | None = None
        self._numbers = itertools.count(1)

    # -- what the test sets up ---------------------------------------------------------

    def serve(self, url: str, data: bytes) -> str:
        """Answer downloads of `url` with `data`; returns `url`."""
        self._sources[url] = data
        return url

    def refuse(self, url: str, error: FerryError) -> str:
        """Fail downloads of `url` with `error`, as the DownloaderService's status reaches the SDK."""
        self._refusals[url] = error
        return url

    def hold(self, url: str) -> None:
        """Downloads of `url` wait, once started, until `release(url)`."""
        self._held[url] = asyncio.Event()

    def release(self, url: str) -> None:
        self._held.pop(url).set()

    def hold_encodes(self) -> None:
        """Encodes wait, once started, until `release_encodes()`."""
        self._encodes_held = asyncio.Event()

    def release_encodes(self) -> None:
        assert self._encodes_held is not None, "encodes were not held"
        self._encodes_held.set()
        self._encodes_held = None

    def refuse_encodes(self, error: FerryError) -> None:
        """Fail every encode with `error`, as the EncoderService's status reaches the SDK."""
        self._encode_refusal = error

    # -- what the runner calls ---------------------------------------------------------

    async def download_file(self, url: str) -> Path:
        self.timeline.append(f"download {url}")
        try:
            if (gate := self._held.get(url)) is not None:
                await gate.wait()
        except asyncio.CancelledError:
            self.timeline.append(f"download {url} cancelled")
            raise
        if url in self._refusals:
            raise self._refusals[url]
        if url not in self._sources:
            raise NotFound(f"{url} answered 404", reason="REMOTE_NOT_FOUND")
        folder = self._downloads_dir / f"download-{next(self._numbers)}"  # one folder per download, as the real one
        folder.mkdir(parents=True)
        path = folder / url.rsplit("/", 1)[-1]
        path.write_bytes(self._sources[url])
        self.timeline.append(f"downloaded {url}")
        return path

    async def encode_tensor(self, tensor: Any, format: str, **options: Any) -> list[common_pb2.File]:
        assert is_tensor(tensor), f"the runner sent {type(tensor).__name__} to be encoded"
        self.encodes.append(Encode(tuple(tensor.shape), format, options))
        self.timeline.append(f"encode {format}")
        if self._encodes_held is not None:
            await self._encodes_held.wait()
        if self._encode_refusal is not None:
            raise self._encode_refusal
        height, width = tensor.shape[:2]
        number = next(self._numbers)
        self.timeline.append(f"encoded {format}")
        return [
            common_pb2.File(
                url=f"http://fake-stack.invalid/files/{number}/out.{format}",
                content_type=_CONTENT_TYPES[format],
                file_name=f"out.{format}",
                image=common_pb2.ImageInfo(width=width, height=height),
            )
        ]


class FakeServices:
    """What `AppRunner(services=...)` is handed: this fake client, and a target nothing listens on."""

    def __init__(self, downloads_dir: Path, timeline: list[str]) -> None:
        self.client = FakeClient(downloads_dir, timeline)
        self.target = NOWHERE

    async def close(self) -> None:
        pass
