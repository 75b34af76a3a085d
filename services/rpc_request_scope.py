"""Calls made for a request are served inside that request's scope, so the services' own log lines name it.

The runner's input downloads and output encodes, and a handler's own SDK calls,
carry the request's id and app as metadata (`ferry.request_scope.scope_metadata`).
The downloader and the encoder serve such a call inside a scope holding just
those two, so what they log for it (a retried source, a storage fallback) carries
`request_id` and `app` as the runner's lines do (`ferry.services.logs`). Nothing
else of a request crosses: not its lifecycle, nor its cancellation.

A caller chooses the metadata: values that are not the shape the runner makes
(letters, digits, `.`, `_`, `-`, `:`; at most 128) are ignored, so no newline
or megabyte reaches every line a call logs.
"""

from __future__ import annotations

import re
from typing import Any

import grpc

from ferry.client import DOWNLOADER_SERVICE, ENCODER_SERVICE
from ferry.request_scope import APP_KEY, REQUEST_ID_KEY, RequestScope, request_scope
from ferry.services.interceptors import HandlerInterceptor, scoped_handler

# The services a runner calls on a request's behalf; the inference service opens its own scopes.
SCOPED_SERVICES = frozenset({DOWNLOADER_SERVICE, ENCODER_SERVICE})
_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestScopeInterceptor(HandlerInterceptor):
    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if details.method.lstrip("/").partition("/")[0] not in SCOPED_SERVICES:
            return handler
        metadata = dict(details.invocation_metadata or ())
        request_id, app = _name(metadata.get(REQUEST_ID_KEY)), _name(metadata.get(APP_KEY))
        if request_id is None:
            return handler
        scope = RequestScope(request_id=request_id, app=app)
        return scoped_handler(handler, lambda _context: request_scope(scope))


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and _NAME.fullmatch(value) else None
