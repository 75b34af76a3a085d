"""The one place a server turns what its handlers raise into gRPC statuses.

Every RPC — unary or streaming, either way — passes through `StatusInterceptor`:

- a request that does not parse (a string field holding invalid UTF-8, a
  truncated message) is INVALID_ARGUMENT, not the UNKNOWN grpc.aio answers
  when a deserializer raises; for a request stream, at the message that fails;
- a `FerryError` becomes its status with an `ErrorInfo` reason;
- anything else is INTERNAL, with the traceback logged: a bug, never the
  caller's fault, and never a message that leaks the exception's details.

Servicers may still abort themselves; an abort passes through untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ferry.services.errors import FerryError, InvalidArgument, abort, abort_with

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message that failed to parse, so the handler wrapper can refuse it."""

    problem: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"the request message does not parse: {self.problem}", reason="MALFORMED_REQUEST")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return _Undecodable(str(error)[:200])

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request


async def _answer(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    if isinstance(error, FerryError):
        await abort_with(context, error)
    log.error("%s failed unexpectedly", method, exc_info=error)
    await abort(context, grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error in {method}; the server logged it")


def _unary_response(behavior: Behavior, method: str, streaming_requests: bool) -> Behavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if streaming_requests:
                request = _checked(request)
            elif isinstance(request, _Undecodable):
                raise request.error()
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _answer(context, error, method)

    return handle


def _streamed_response(behavior: Behavior, method: str, streaming_requests: bool) -> Behavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            if streaming_requests:
                request = _checked(request)
            elif isinstance(request, _Undecodable):
                raise request.error()
            result = behavior(request, context)
            if inspect.isawaitable(result):  # a handler that writes with context.write()
                await result
            else:
                async for response in result:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _answer(context, error, method)

    return handle


_MAKERS = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary", _unary_response),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary", _unary_response),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream", _streamed_response),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream", _streamed_response),
}


def mapped_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` with malformed requests refused and raised errors answered as statuses."""
    make, attribute, wrap = _MAKERS[(handler.request_streaming, handler.response_streaming)]
    return make(
        wrap(getattr(handler, attribute), method, handler.request_streaming),
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class StatusInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return mapped_handler(handler, handler_call_details.method)
