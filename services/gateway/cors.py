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


def enable_cors(app: web.Application, origins: Collection[str]) -> None:
    """Pages of `origins` may call `app`: their preflights are answered and every answer they get (streams and
    refusals included) is marked readable; other origins get no CORS headers, so their pages cannot read an
    answer (a preflight from one is refused 403)."""
    allowed = frozenset(origin.lower() for origin in origins)

    @web.middleware
    async def preflights(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method != "OPTIONS" or origin is None or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        if origin.lower() not in allowed:
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

    async def mark_readable(request: web.Request, response: web.StreamResponse) -> None:
        """Just before any answer's headers go out, streamed ones too (a middleware would be too late for them)."""
        response.headers.add("Vary", "Origin")  # every answer: a shared cache must not hand one origin's to another
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() in allowed and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS

    app.middlewares.insert(0, preflights)  # outermost: a preflight is answered before anything else looks at it
    app.on_response_prepare.append(mark_readable)
