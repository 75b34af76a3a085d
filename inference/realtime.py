"""Realtime sessions: one long call to a realtime endpoint, inputs in, outputs out.

A session feeds the caller's inputs to the handler's async iterator, each one
parsed and validated as it arrives: a bad input is answered with a
`RequestError` and the call goes on. What the handler yields is validated
against its output model and sent back in order. The handler raising ends the
call (INTERNAL, "ExcType: message"); the handler returning ends it cleanly; the
caller's `end` message ends the handler's input iterator; the caller vanishing
sets `context.cancelled` and closes the handler's generator, so its `finally`
runs.

grpc-python reads a caller's cancel as the end of its stream, like a half-close
(a failed read and a clean end are one EOF), and the call's cancellation may
reach the server a moment later. So a caller that declares `sends_end` in its
`open` (Ferry's SDKs do) ends its inputs with an `end` message, and its stream
ending without one means it is gone; a caller that does not declare it ends
its inputs by half-closing, as before.

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
from contextlib import asynccontextmanager
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
    """The handler's `AsyncIterator[Input]`: the caller's valid inputs, ending when the caller is done sending."""

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

    def __init__(self, runner: AppRunner, path: str, expires_in: int | None = None, *, sends_end: bool = False) -> None:
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
        # The caller ends its inputs with `end`, so its stream ending without one means it is gone.
        self.sends_end = sends_end
        # Set when the caller vanishes; the handler's context exposes it.
        self.cancelled = threading.Event()
        self._inputs: asyncio.Queue[BaseModel | None] = asyncio.Queue(_BUFFERED)
        self._outbox: asyncio.Queue[inference_pb2.RealtimeResponse | _Ended] = asyncio.Queue(_BUFFERED)
        self._finished = False  # the handler returned or failed, and the call says so

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
        opening = first.open
        return cls(runner_for(opening.app_id), opening.path, lifetime(opening.lifecycle), sends_end=opening.sends_end)

    @asynccontextmanager
    async def running(self, requests: AsyncIterator[inference_pb2.RealtimeRequest]) -> AsyncIterator[None]:
        """The handler runs on the messages after `open` while this is entered: read `next_response` meanwhile.

        The handler has started once this is entered, so a caller that goes at once still finds it to
        close. Leaving before the handler finished (the caller vanished) cancels the session.
        """
        context = self._context()
        tasks = (asyncio.create_task(self._read(requests)), asyncio.create_task(self._handle(context)))
        try:
            yield
        finally:
            if not self._finished:
                self.cancelled.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            context.close()

    async def next_response(self) -> inference_pb2.RealtimeResponse | None:
        """The call's next response; None once the handler returned; raises its failure as a FerryError."""
        item = await self._outbox.get()
        if not isinstance(item, _Ended):
            return item
        self._finished = True
        if item.error is not None:
            raise item.error
        return None

    async def _read(self, requests: AsyncIterator[inference_pb2.RealtimeRequest]) -> None:
        ended = False  # the caller sent `end`
        try:
            async for request in requests:
                try:
                    model = self._input_of(request, ended)
                except InvalidArgument as rejected:
                    await self._outbox.put(inference_pb2.RealtimeResponse(error=request_error(failure_of(rejected))))
                    continue
                if model is None:
                    ended = True
                await self._inputs.put(model)  # None: the handler's input iterator ends
        except Exception as error:  # noqa: BLE001 (the call itself broke: nothing more will come, and no one may be listening)
            log.warning("realtime session %s: reading the caller's messages failed: %s", self.request_id, error)
            await self._caller_gone(f"the caller's stream broke: {error}")
            return
        if self.sends_end and not ended:
            await self._caller_gone("the caller's stream stopped without `end`: it cancelled or vanished")
        elif not ended:
            await self._inputs.put(None)  # a caller that half-closes is done writing

    def _input_of(self, request: inference_pb2.RealtimeRequest, ended: bool) -> BaseModel | None:
        """The input a message carries, None for `end`; InvalidArgument for a message that is not one."""
        if ended:
            raise InvalidArgument("the caller already sent `end`: nothing may follow it", reason="AFTER_END")
        kind = request.WhichOneof("message")
        if kind == "end":
            return None
        if kind != "input_json":
            raise InvalidArgument("after `open`, each message carries one input_json, or `end`", reason="NOT_AN_INPUT")
        return parse_input(self.endpoint.input_model, request.input_json)

    async def _caller_gone(self, why: str) -> None:
        # Set before the call ends, so the handler sees `cancelled` whether this or the call's own
        # cancellation reaches the session first.
        self.cancelled.set()
        await self._outbox.put(_Ended(Cancelled(why)))

    async def _handle(self, context: RequestContext) -> None:
        stream = _Inputs(self._inputs)
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
                await self._drive(generator)
            except Exception as error:  # noqa: BLE001 (whatever the handler raised ends the call with a status)
                where = f"{self.runner.spec.app_id}{self.endpoint.path} (realtime)"
                await self._outbox.put(_Ended(request_failure(where, error)))
                return
        await self._outbox.put(_Ended())

    async def _drive(self, generator: AsyncGenerator[Any, None]) -> None:
        try:
            async for result in generator:
                await self._outbox.put(inference_pb2.RealtimeResponse(output_json=await self._output_json(result)))
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
