"""A server span for every RPC, a child of the caller's span (W3C trace context in the call's metadata).

Only in the interceptor chain while tracing is on (services/tracing.py): off, no
call pays for it. It sits outermost, so the span covers the token check and the
status mapping, and it reads the code the call ended with from its context (as
rpc_metrics.py does). A streaming response's span lasts to its last message.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from ferry.services import tracing
from ferry.services.interceptors import HandlerInterceptor, scoped_handler
from ferry.services.rpc_context import RpcContext
from ferry.services.tracing import Attributes


class TracingInterceptor(HandlerInterceptor):
    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return scoped_handler(handler, functools.partial(_server_span, details.method.lstrip("/")))


def server_span(name: str, carrier: Mapping[str, str], attributes: Attributes) -> AbstractContextManager[Span]:
    """The current span while a call is served: a child of the caller's span, whose W3C context `carrier` (the
    call's metadata, an HTTP request's headers) holds. Its status is the server's to set from the answer, not
    from an exception escaping it (a FerryError raised is an answer)."""
    span: AbstractContextManager[Span] = tracing._tracer.start_as_current_span(
        name,
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
    return span


@contextlib.contextmanager
def _server_span(name: str, context: RpcContext) -> Iterator[None]:
    """`name` (ferry.v1.InferenceService/Run: the semantic conventions' span name), a child of the caller's span."""
    service, _, method = name.partition("/")
    metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
    with server_span(name, metadata, {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}):
        try:
            yield
        finally:
            _ended(context)


def _ended(context: RpcContext) -> None:
    code: Any = context.code()  # None until something sets it: an answered call is OK
    status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status is not grpc.StatusCode.OK:
        span.set_status(StatusCode.ERROR, status.name)
