"""What every encode pipeline is (image, video, wav), and the loop that drives one.

A pipeline is fed the stream's chunks as they arrive, then asked for its
output; if anything fails, or the caller goes away (the RPC is cancelled),
it is aborted, and what it started is stopped and removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from ferry.services.encoder.request import Chunk

T = TypeVar("T")
Output = TypeVar("Output", covariant=True)


class Run(Protocol):
    """Runs `function(*args)` on the encode executor: CPU work never runs on the event loop."""

    def __call__(self, function: Callable[..., T], /, *args: object) -> Awaitable[T]: ...


class Pipeline(Protocol[Output]):
    async def feed(self, chunk: Chunk) -> None: ...

    async def finish(self) -> Output: ...

    async def abort(self) -> None: ...


async def fed(pipeline: Pipeline[T], chunks: AsyncIterator[Chunk]) -> T:
    """Every chunk into `pipeline`, then its output; aborted when anything fails or the caller goes."""
    try:
        async for chunk in chunks:
            await pipeline.feed(chunk)
        return await pipeline.finish()
    except BaseException:
        await pipeline.abort()
        raise
