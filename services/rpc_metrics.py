"""Every RPC counted, timed and tracked in flight by one server interceptor, unary and streaming alike.

It sits outermost, so a call the token check refuses counts too (UNAUTHENTICATED),
and it reads the code the call ended with from its context: what the status
interceptor set for a raised error, what a servicer's own abort set, OK else.
A streaming response is timed to its last message.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ferry.services.interceptors import KINDS, HandlerInterceptor, handler_like
from ferry.services.metrics import StackMetrics


class MetricsInterceptor(HandlerInterceptor):
    """Counts calls to the methods the server has (an unknown method has nothing to label it with)."""

    def __init__(self, metrics: StackMetrics) -> None:
        self._metrics = metrics

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = details.method.lstrip("/").partition("/")
        _, attribute = KINDS[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attribute)
        measure = _Measure(self._metrics, service, method)
        if handler.response_streaming:
            return handler_like(handler, measure.streamed(behavior))
        return handler_like(handler, measure.unary(behavior))


class _Measure:
    def __init__(self, metrics: StackMetrics, service: str, method: str) -> None:
        self.metrics, self.service, self.method = metrics, service, method

    def unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            began = self._began()
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self._ended(began, context)

        return handle

    def streamed(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            began = self._began()
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    await result
                else:
                    async for response in result:
                        yield response
            finally:
                self._ended(began, context)

        return handle

    def _began(self) -> float:
        self.metrics.rpc_in_flight.labels(self.service, self.method).inc()
        return time.perf_counter()

    def _ended(self, began: float, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        code: Any = context.code()  # None until something sets it: an answered call is OK
        name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code is None else str(code)
        self.metrics.rpc_in_flight.labels(self.service, self.method).dec()
        self.metrics.rpc_seconds.labels(self.service, self.method).observe(time.perf_counter() - began)
        self.metrics.rpc_requests.labels(self.service, self.method, name).inc()
