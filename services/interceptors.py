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

import abc
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ferry.errors import FerryError, InvalidArgument
from ferry.services.errors import abort, abort_with
from ferry.services.rpc_context import RpcContext

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


def _parsed(request: Any, streaming_requests: bool) -> Any:
    """The request, or its stream checked message by message; InvalidArgument for one that did not parse."""
    if streaming_requests:
        return _checked(request)
    if isinstance(request, _Undecodable):
        raise request.error()
    return request


async def _answer(context: RpcContext, error: Exception, method: str) -> None:
    if isinstance(error, FerryError):
        await abort_with(context, error)
    log.error("%s failed unexpectedly", method, exc_info=error)
    await abort(context, grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error in {method}; the server logged it")


def _unary_response(behavior: Behavior, method: str, streaming_requests: bool) -> Behavior:
    async def handle(request: Any, context: RpcContext) -> Any:
        try:
            result = behavior(_parsed(request, streaming_requests), context)
            return await result if inspect.isawaitable(result) else result
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 (the one place a handler's error becomes a status)
            await _answer(context, error, method)

    return handle


def _streamed_response(behavior: Behavior, method: str, streaming_requests: bool) -> Behavior:
    async def handle(request: Any, context: RpcContext) -> AsyncIterator[Any]:
        try:
            result = behavior(_parsed(request, streaming_requests), context)
            if inspect.isawaitable(result):  # a handler that writes with context.write()
                await result
            else:
                async for response in result:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # noqa: BLE001 (the one place a handler's error becomes a status)
            await _answer(context, error, method)

    return handle


KINDS = {  # (request streaming, response streaming) → how to make such a handler, and its behavior's name
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


def handler_like(
    handler: grpc.RpcMethodHandler[Any, Any],
    behavior: Behavior,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s streaming kind and serializers that runs `behavior` instead."""
    make, _ = KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def mapped_handler(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with malformed requests refused and raised errors answered as statuses."""
    _, attribute = KINDS[(handler.request_streaming, handler.response_streaming)]
    wrap = _streamed_response if handler.response_streaming else _unary_response
    behavior = wrap(getattr(handler, attribute), method, handler.request_streaming)
    return handler_like(handler, behavior, _tolerant(handler.request_deserializer))


CallScope = Callable[[RpcContext], AbstractContextManager[object]]


def scoped_handler(handler: grpc.RpcMethodHandler[Any, Any], scope: CallScope) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` run inside `scope(context)`: entered as the call starts, left once it has answered — after a
    streaming response's last message. What watches every call (metrics, traces) wraps it so."""
    _, attribute = KINDS[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)

    async def unary(request: Any, context: RpcContext) -> Any:
        with scope(context):
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

    async def streamed(request: Any, context: RpcContext) -> AsyncIterator[Any]:
        # grpc.aio reads a response stream from the one task that serves the call: a context the scope
        # attaches (a span made current) is detached by the same task after the last message.
        with scope(context):
            result = behavior(request, context)
            if inspect.isawaitable(result):  # a handler that writes with context.write()
                await result
            else:
                async for response in result:
                    yield response

    return handler_like(handler, streamed if handler.response_streaming else unary)


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that answers every call to a method the server has with a handler of its own making
    (`wrap`); a call to a method it has not passes through, for grpc to answer UNIMPLEMENTED."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else self.wrap(handler, handler_call_details)

    @abc.abstractmethod
    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler that answers calls to `handler`'s method."""


class StatusInterceptor(HandlerInterceptor):
    def wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return mapped_handler(handler, details.method)
