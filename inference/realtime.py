"""Realtime sessions: one long call to a realtime endpoint, inputs in, outputs out.

A session feeds the caller's inputs to the handler's async iterator, each one
parsed and validated as it arrives: a bad input is answered with a
`RequestError` and the call goes on. What the handler yields is validated
against its output model and sent back in order. The handler raising ends the
call (INTERNAL, "ExcType: message"); the handler returning ends it cleanly; the
caller half-closing ends the handler's input iterator; the caller vanishing
sets `context.cancelled` and closes the handler's generator, so its `finally`
runs.

Sessions run beside the runner's queue, not in a `max_concurrency` slot: a call
that stays open for minutes would otherwise starve every queued request. Both
directions are bounded, so a caller that sends faster than the handler
consumes is slowed by gRPC flow control instead of piling up in memory.

A rejection is answered as soon as its input is read, so it may overtake the
outputs of earlier inputs the handler is still working on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from pydantic import BaseModel

from ferry.errors import Cancelled, FerryError, InvalidArgument, NotFound
from ferry.inference.context import RequestContext, logging_context, using_context
from ferry.inference.input_parsing import parse_input
from ferry.inference.outputs import encode_outputs
from ferry.inference.queue.base import Failure
from ferry.inference.runner import AppRunner, failure_of, request_failure
from ferry.request_scope import RequestScope, request_scope
from ferry.v1 import common_pb2, inference_pb2

__all__ = ["RealtimeSession"]

log = logging.getLogger(__name__)

# Validated inputs the handler has not taken yet, outputs not sent yet. Small,
# so backpressure reaches the caller while a frame or two is always ready.
_BUFFERED = 8


@dataclass(frozen=True)
class _Ended:
    """The handler is done: it returned (no error) or failed."""

    error: FerryError | None = None


class _Inputs:
    """The handler's `AsyncIterator[Input]`: the caller's valid inputs, ending when the caller stops writing."""

    def __init__(self, queue: asyncio.Queue[BaseModel | None]) -> None:
        self._queue = queue
        self._ended = False

    def __aiter__(self) -> _Inputs:
        return self

    async def __anext__(self) -> BaseModel:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._ended = True
            raise StopAsyncIteration
        return item


class RealtimeSession:
    """One Realtime call to one realtime endpoint of a hosted app."""

    def __init__(self, runner: AppRunner, path: str, expires_in: int | None = None) -> None:
        endpoint = runner.spec.endpoints.get(path or "/")
        if endpoint is None:
            raise NotFound(f"app {runner.spec.app_id!r} has no endpoint {path or '/'!r}", reason="UNKNOWN_ENDPOINT")
        if not endpoint.realtime:
            raise NotFound(
                f"{runner.spec.app_id}{endpoint.path} is not a realtime endpoint: call it with Run or Stream",
                reason="UNKNOWN_ENDPOINT",
            )
        self.runner = runner
        self.endpoint = endpoint
        # The caller's lifecycle preference for the media the session produces.
        self.expires_in = expires_in
        self.request_id = uuid.uuid4().hex
        # Set when the caller vanishes; the handler's context exposes it.
        self.cancelled = threading.Event()

    @classmethod
    def open(
        cls,
        first: inference_pb2.RealtimeRequest | None,
        runner_for: Callable[[str], AppRunner],
        lifetime: Callable[[common_pb2.Lifecycle], int | None],
    ) -> RealtimeSession:
        """The session the call's first message opens.

        INVALID_ARGUMENT unless it is `open`, NOT_FOUND for an unknown app or path.

        `lifetime` reads the caller's lifecycle preference from the `open` message (or the call's header).
        """
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument(
                "a Realtime call starts with an `open` message naming the app and the endpoint path",
                reason="OPEN_FIRST",
            )
        return cls(runner_for(first.open.app_id), first.open.path, lifetime(first.open.lifecycle))

    async def run(
        self, requests: AsyncIterator[inference_pb2.RealtimeRequest]
    ) -> AsyncGenerator[inference_pb2.RealtimeResponse, None]:
        """The call's responses, from the messages after `open`; raises the handler's failure as a FerryError.

        Closing this generator early (the caller vanished) cancels the session.
        """
        inputs: asyncio.Queue[BaseModel | None] = asyncio.Queue(_BUFFERED)
        outbox: asyncio.Queue[inference_pb2.RealtimeResponse | _Ended] = asyncio.Queue(_BUFFERED)
        context = self._context()
        reader = asyncio.create_task(self._read(requests, inputs, outbox))
        handler = asyncio.create_task(self._handle(context, inputs, outbox))
        ended = False
        try:
            while True:
                item = await outbox.get()
                if isinstance(item, _Ended):
                    ended = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            if not ended:
                self.cancelled.set()
            reader.cancel()
            handler.cancel()
            await asyncio.gather(reader, handler, return_exceptions=True)
            context.close()

    async def _read(
        self,
        requests: AsyncIterator[inference_pb2.RealtimeRequest],
        inputs: asyncio.Queue[BaseModel | None],
        outbox: asyncio.Queue[inference_pb2.RealtimeResponse | _Ended],
    ) -> None:
        try:
            async for request in requests:
                try:
                    if request.WhichOneof("message") != "input_json":
                        raise InvalidArgument(
                            "after `open`, each message carries one input_json", reason="NOT_AN_INPUT"
                        )
                    model = parse_input(self.endpoint.input_model, request.input_json)
                except InvalidArgument as rejected:
                    await outbox.put(inference_pb2.RealtimeResponse(error=request_error(failure_of(rejected))))
                else:
                    await inputs.put(model)
        except Exception as error:  # noqa: BLE001 (the call itself broke: nothing more will come, and no one may be listening)
            log.warning("realtime session %s: reading the caller's messages failed: %s", self.request_id, error)
            # A caller that cancels breaks its stream too, and this can be seen before the session itself is
            # cancelled: the handler must see `cancelled` whichever comes first (a loaded CI run saw this one).
            self.cancelled.set()
            await outbox.put(_Ended(Cancelled(f"the caller's stream broke: {error}")))
            return
        await inputs.put(None)  # the caller is done writing: the handler's input iterator ends

    async def _handle(
        self,
        context: RequestContext,
        inputs: asyncio.Queue[BaseModel | None],
        outbox: asyncio.Queue[inference_pb2.RealtimeResponse | _Ended],
    ) -> None:
        stream = _Inputs(inputs)
        handler = getattr(self.runner.app, self.endpoint.handler_name)
        with (
            using_context(context),
            request_scope(
                RequestScope(
                    self.expires_in,
                    cancelled=self.cancelled,
                    stack=self.runner.services.target,
                    request_id=self.request_id,
                    app=self.runner.spec.app_id,
                )
            ),
        ):
            args, kwargs = self.endpoint.arguments(stream, context)
            generator: AsyncGenerator[Any, None] = handler(*args, **kwargs)
            try:
                await self._drive(generator, outbox)
            except Exception as error:  # noqa: BLE001 (whatever the handler raised ends the call with a status)
                where = f"{self.runner.spec.app_id}{self.endpoint.path} (realtime)"
                await outbox.put(_Ended(request_failure(where, error)))
                return
        await outbox.put(_Ended())

    async def _drive(
        self, generator: AsyncGenerator[Any, None], outbox: asyncio.Queue[inference_pb2.RealtimeResponse | _Ended]
    ) -> None:
        try:
            async for result in generator:
                await outbox.put(inference_pb2.RealtimeResponse(output_json=await self._output_json(result)))
        finally:
            # Cancelled while waiting on the outbox, or an output that failed its model: the generator
            # is suspended at a `yield`, and only closing it runs its `finally`.
            await generator.aclose()

    async def _output_json(self, result: Any) -> str:
        """One yielded output as the JSON the caller receives, tensors in media fields encoded and stored."""
        output_model = self.endpoint.output_model
        result = await encode_outputs(self.runner.services.client, output_model, result, self.expires_in)
        return (result if isinstance(result, output_model) else output_model.model_validate(result)).model_dump_json()

    def _context(self) -> RequestContext:
        # A realtime call has no event stream besides its outputs: progress, logs and partials go to `logging`.
        where = f"{self.runner.spec.app_id}{self.endpoint.path} session {self.request_id}"
        return logging_context(self.request_id, where, log, self.cancelled)


def request_error(failure: Failure) -> inference_pb2.RequestError:
    """How a failure reads in a response (a realtime message's, a stream's, GetStatus's)."""
    code = grpc.StatusCode[failure.code]
    return inference_pb2.RequestError(code=code.value[0], message=failure.message, reason=failure.reason or code.name)
