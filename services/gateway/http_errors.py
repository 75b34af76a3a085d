"""A failed gRPC call as the reference platform's HTTP API answers it: a status code and `{"detail", "error_type"}`.

One table, used by every REST route of the gateway (Connect has its own, defined by its protocol). The
codes are chosen so the reference client retries only what is worth retrying: it retries 408, 409 and
429 on its own, so nothing a caller must fix maps to those.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from ferry.errors import FerryError

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,  # the input broke the endpoint's schema, as the reference answers
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # e.g. the result of a request still running
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.ALREADY_EXISTS: 400,
    grpc.StatusCode.CANCELLED: 400,  # the result of a cancelled request
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,  # over a size cap: not 429, which the client would retry
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Names the error's kind for the reference client, which reads it as `FalClientHTTPError.error_type`.
ERROR_TYPE_HEADER = "X-Fal-Error-Type"


def json_error(status: int, detail: str, error_type: str, **headers: str) -> web.Response:
    """An error response in the reference platform's shape."""
    body: dict[str, Any] = {"detail": detail, "error_type": error_type}
    return web.json_response(body, status=status, headers={ERROR_TYPE_HEADER: error_type, **headers})


def error_response(error: FerryError) -> web.Response:
    """`error` (a failed call, or a request's failure) as its HTTP status and JSON body."""
    status = HTTP_STATUS.get(error.code, 500)
    return json_error(status, error.message, error.reason or error.code.name)


@web.middleware
async def json_errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (no such route 404, wrong method 405, a CDN write without
    the token 401) in the same JSON shape as the routes' errors, rather than as text."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kind = error.reason.upper().replace(" ", "_")
        return json_error(error.status, error.text or error.reason, kind, **_kept_headers(error))


def _kept_headers(error: web.HTTPException) -> dict[str, str]:
    """What a refusal must still say besides its body: the methods a 405 allows, the scheme a 401 wants."""
    return {name: error.headers[name] for name in ("Allow", "WWW-Authenticate") if name in error.headers}


async def close_after_an_unreadable_body(request: web.Request, response: web.StreamResponse) -> None:
    """An answer to a request whose body failed to decode (not the gzip it names, cut short) says
    `Connection: close`: aiohttp ends that connection after answering, and a client told nothing
    reuses it, its next request meeting a reset (one run in two of the upload test that sends such
    a body, before this)."""
    if request.content.exception() is not None:
        response.force_close()
        response.headers["Connection"] = "close"  # the hook runs after aiohttp has chosen the header
