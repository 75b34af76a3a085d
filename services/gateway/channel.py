"""How the HTTP face reaches the stack's gRPC server: one grpc.aio channel, opened on first use.

The HTTP server starts before the gRPC server listens (storage needs the CDN's
URL first), so the channel's address is read only when the first request needs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
from aiohttp import web

from ferry.connection import Connection

T = TypeVar("T")


class StackChannel:
    """`connection`: where this stack's gRPC server listens (no token: each call carries its caller's)."""

    def __init__(self, connection: Callable[[], Connection]) -> None:
        self._connection = connection
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = self._connection().aio_channel()
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def caller_metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The caller's credentials as gRPC metadata: `Authorization: Bearer T`, or the reference client's `Key T`.

    The gRPC server checks them as it checks any call, so the HTTP face has no token rules of its own. A token
    that is not printable ASCII cannot be gRPC metadata (grpc raises on it) and is no server's token: it is
    sent as no credentials, which the server refuses as it refuses any call without them.
    """
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() in ("bearer", "key") and token and token.isascii() and token.isprintable():
        return (("authorization", f"Bearer {token}"),)
    return ()


# aiohttp tells a handler of a closed connection only by its transport going away (no event, unless the
# runner cancels handlers): this is how often a call in flight looks, so it ends within a tenth of a second.
DISCONNECT_POLL_SECONDS = 0.1


class Client:
    """Whether the HTTP client left before its call ended."""

    left = False


@asynccontextmanager
async def cancelled_when_client_leaves(request: web.Request, call: grpc.aio.Call) -> AsyncIterator[Client]:
    """Cancel `call` when the HTTP client closes its connection first: its work is for nobody."""
    client = Client()

    async def watch() -> None:
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110 (no event)
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        client.left = True
        call.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield client
    finally:
        watcher.cancel()


async def reply_unless_client_leaves(request: web.Request, call: grpc.aio.UnaryUnaryCall[Any, T]) -> T | None:
    """`call`'s reply; None when the HTTP client closed its connection first (the call was cancelled: its
    reply was for nobody). A failed call raises as awaiting it would."""
    async with cancelled_when_client_leaves(request, call) as client:
        try:
            return await call
        except asyncio.CancelledError:
            if not client.left:
                raise
            return None
