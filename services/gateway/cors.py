"""Cross-origin calls from the browser pages of origins the operator named (`--cors-origin`); none by default.

Credentials travel in the `Authorization` header, never in cookies, so no origin is ever allowed to send
cookies (no `Access-Control-Allow-Credentials`) and a page of another origin learns nothing it could not
ask for with the token it already holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from aiohttp import web

ALLOWED_METHODS = "GET, HEAD, POST, PUT"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, "
    "X-Fal-Queue-Priority, X-Fal-Request-Timeout, X-Fal-Object-Lifecycle-Preference"
)
EXPOSED_HEADERS = "X-Fal-Request-Id, X-Fal-Error-Type, Content-Disposition"
PREFLIGHT_MAX_AGE_SECONDS = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_middleware(origins: Collection[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Answers preflights and marks answers readable for pages of `origins`; other origins get no CORS headers,
    so their pages cannot read an answer (a preflight from one is refused 403)."""
    allowed = frozenset(origin.lower() for origin in origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        permitted = origin.lower() in allowed
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not permitted:
                return web.json_response({"detail": "origin not allowed", "error_type": "CORS_ORIGIN"}, status=403)
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": ALLOWED_METHODS,
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
                    "Vary": "Origin",
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as error:  # 404, 405, 413 from aiohttp itself: readable as well
            response = error
        if permitted:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers.add("Vary", "Origin")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return middleware
