"""Every RPC counted, timed and tracked in flight by one server interceptor, unary and streaming alike.

It sits outermost, so a call the token check refuses counts too (UNAUTHENTICATED),
and it reads the code the call ended with from its context: what the status
interceptor set for a raised error, what a servicer's own abort set, OK else.
A streaming response is timed to its last message.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

import grpc

from ferry.services.interceptors import HandlerInterceptor, scoped_handler
from ferry.services.metrics import StackMetrics
from ferry.services.rpc_context import RpcContext


class MetricsInterceptor(HandlerInterceptor):
    """Counts calls to the methods the server has (an unknown method has nothing to label it with)."""

    def __init__(self, metrics: StackMetrics) -> None:
        self._metrics = metrics

    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = details.method.lstrip("/").partition("/")
        return scoped_handler(handler, functools.partial(self._measured, service, method))

    @contextlib.contextmanager
    def _measured(self, service: str, method: str, context: RpcContext) -> Iterator[None]:
        in_flight = self._metrics.rpc_in_flight.labels(service, method)
        in_flight.inc()
        began = time.perf_counter()
        try:
            yield
        finally:
            code: Any = context.code()  # None until something sets it: an answered call is OK
            name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code is None else str(code)
            in_flight.dec()
            self._metrics.rpc_seconds.labels(service, method).observe(time.perf_counter() - began)
            self._metrics.rpc_requests.labels(service, method, name).inc()
