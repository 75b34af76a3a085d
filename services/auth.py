"""Bearer-token access control for the gRPC server and the CDN's upload paths.

Health and reflection stay open so load balancers and `buf curl` can probe a
locked server. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from ferry.services.errors import to_status
from ferry.services.interceptors import HandlerInterceptor, handler_like
from ferry.services.rpc_context import RpcContext

OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)


def bearer_matches(header_value: str | None, token: str) -> bool:
    """True when `header_value` is exactly `Bearer <token>`, compared in constant time."""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header_value or "").encode(), expected)


def _rejecting_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same streaming kind as `handler` that answers UNAUTHENTICATED."""
    status = to_status(grpc.StatusCode.UNAUTHENTICATED, "BAD_TOKEN", "missing or wrong bearer token")

    async def reject(_request: Any, context: RpcContext) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    return handler_like(handler, reject)


class BearerTokenInterceptor(HandlerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        authorization = metadata.get("authorization")  # a str: only "-bin" keys carry bytes
        if isinstance(authorization, str) and bearer_matches(authorization, self._token):
            return handler
        return _rejecting_handler(handler)


def cdn_auth_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Reads (GET, HEAD) of stored files are public — file URLs are capabilities; anything that writes to them
    needs the token. The HTTP gateway's routes, beside them, forward their callers' credentials to gRPC."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        writes_files = request.path.startswith("/files/") and request.method not in ("GET", "HEAD", "OPTIONS")
        if writes_files and not bearer_matches(request.headers.get("Authorization"), token):
            raise web.HTTPUnauthorized(text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware
