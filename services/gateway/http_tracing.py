"""A server span for every HTTP request the stack answers, a child of the caller's span (W3C `traceparent`).

Only installed while tracing is on (services/tracing.py), and only then is it
imported: it imports opentelemetry. The gateway's routes call the stack's own
gRPC server over a channel that passes the current span on, so a request
through the HTTP face — the reference client's queue API, Connect, uploads —
is one trace with the RPCs it made and the run it started.

The span is named by the route's pattern (`POST /queue/{owner}/{app}`), never
by the path a caller sent (it holds request ids, file names, a stored file's
key), and carries the status code it was answered with; 5xx is an error.
Scrapes of `/metrics` are not traced: a scraper would fill the trace store.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.trace import Span, StatusCode

from ferry.services.rpc_tracing import server_span

UNTRACED_ROUTES = frozenset({"/metrics"})


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    if route in UNTRACED_ROUTES:
        return await handler(request)
    attributes = {"http.request.method": request.method, "http.route": route}
    with server_span(f"{request.method} {route}", dict(request.headers), attributes) as span:
        try:
            response = await handler(request)
        except web.HTTPException as answer:  # an answer raised, not a failure of ours
            _answered(span, answer.status)
            raise
        except Exception:  # a bug (a client that left is no answer: its span ends unmarked)
            _answered(span, 500)
            raise
        _answered(span, response.status)
        return response


def _answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)
