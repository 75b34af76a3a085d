"""How the HTTP face reaches the stack's gRPC server: one grpc.aio channel, opened on first use.

The HTTP server starts before the gRPC server listens (storage needs the CDN's
URL first), so the channel's address is read only when the first request needs it.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from aiohttp import web

from ferry.connection import Connection


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
