"""A server span for every RPC, a child of the caller's span (W3C trace context in the call's metadata).

Only in the interceptor chain while tracing is on (services/tracing.py): off, no
call pays for it. It sits outermost, so the span covers the token check and the
status mapping, and it reads the code the call ended with from its context (as
rpc_metrics.py does). A streaming response's span lasts to its last message.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from ferry.services import tracing
from ferry.services.interceptors import KINDS, HandlerInterceptor, handler_like


class TracingInterceptor(HandlerInterceptor):
    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        _, attribute = KINDS[(handler.request_streaming, handler.response_streaming)]
        traced = _Traced(details.method, getattr(handler, attribute))
        return handler_like(handler, traced.streamed() if handler.response_streaming else traced.unary())


class _Traced:
    def __init__(self, method: str, behavior: Callable[..., Any]) -> None:
        self.behavior = behavior
        self.name = method.lstrip("/")  # ferry.v1.InferenceService/Run: the semantic conventions' span name
        service, _, rpc_method = self.name.partition("/")
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}

    def _span(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        return tracing._tracer.start_as_current_span(
            self.name,
            context=propagate.extract(metadata),
            kind=SpanKind.SERVER,
            attributes=self.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def unary(self) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._span(context):
                try:
                    result = self.behavior(request, context)
                    return await result if inspect.isawaitable(result) else result
                finally:
                    _ended(context)

        return handle

    def streamed(self) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            # grpc.aio reads a response stream from the one task that serves the call: the span's context,
            # attached here, is detached by the same task after the last message.
            with self._span(context):
                try:
                    result = self.behavior(request, context)
                    if inspect.isawaitable(result):
                        await result
                    else:
                        async for response in result:
                            yield response
                finally:
                    _ended(context)

        return handle


def _ended(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    code: Any = context.code()  # None until something sets it: an answered call is OK
    status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status is not grpc.StatusCode.OK:
        span.set_status(StatusCode.ERROR, status.name)
