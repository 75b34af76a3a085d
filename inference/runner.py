"""Runs one app's endpoints: a queue in front of a concurrency limit, request records, events, cancellation.

Requests wait in an ordered list, so a queued request always knows its
position; `max_concurrency` workers take them in order. A handler's progress,
log lines and partial outputs become events every listener of the request
receives. Sync handlers run in a worker thread (the context variables that
`App.progress` relies on are copied in); cancelling one sets the flag its
context exposes, and its slot is only freed once the thread returns, so the
concurrency limit (the GPU) stays honest.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ferry.errors import Cancelled, DeadlineExceeded, FerryError, Internal, NotFound
from ferry.inference.app import App, AppSpec, EndpointSpec, describe
from ferry.inference.context import RequestCancelled, RequestContext, using_context
from ferry.inference.input_parsing import parse_input
from ferry.inference.inputs import InputFiles, discard, download_inputs, input_urls
from ferry.inference.outputs import encode_outputs
from ferry.inference.services import ServiceClients
from ferry.request_scope import RequestScope, request_scope
from ferry.v1 import inference_pb2

log = logging.getLogger(__name__)

QUEUED = inference_pb2.REQUEST_STATE_QUEUED
IN_PROGRESS = inference_pb2.REQUEST_STATE_IN_PROGRESS
COMPLETED = inference_pb2.REQUEST_STATE_COMPLETED


class HandlerFailed(Internal):
    reason = "HANDLER_FAILED"


@dataclass
class RequestRecord:
    request_id: str
    endpoint: EndpointSpec
    input: BaseModel
    # Seconds the media this request produces lives (the caller's lifecycle preference); None = the store's default.
    expires_in: int | None = None
    state: inference_pb2.RequestState.ValueType = QUEUED
    logs: list[inference_pb2.LogLine] = field(default_factory=list)
    progress: inference_pb2.Progress | None = None
    output_json: str = ""
    error: FerryError | None = None
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    # The input downloads, started while the request is next in line.
    prefetch: asyncio.Task[tuple[InputFiles, dict[str, Path]]] | None = None
    # Set when the handler has returned: the slot is free while outputs encode.
    handler_returned: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: set[asyncio.Queue[inference_pb2.StreamResponse]] = field(default_factory=set)

    def publish(self, response: inference_pb2.StreamResponse) -> None:
        response.request_id = self.request_id
        for queue in self.listeners:
            queue.put_nowait(response)

    def finish(self, output_json: str = "", error: FerryError | None = None) -> None:
        if self.state == COMPLETED:
            return
        self.state, self.output_json, self.error = COMPLETED, output_json, error
        if error is None:
            self.publish(inference_pb2.StreamResponse(completed=inference_pb2.CompletedEvent(output_json=output_json)))
        else:
            self.publish(inference_pb2.StreamResponse(failed=inference_pb2.FailedEvent(error=request_error(error))))
        self.finished.set()


def _drop_prefetch(record: RequestRecord) -> None:
    """Stop a cancelled request's input downloads, or delete what they already fetched."""
    prefetch = record.prefetch
    if prefetch is None:
        return
    if not prefetch.done():
        prefetch.cancel()  # download_inputs removes its partial work
    elif not prefetch.cancelled() and prefetch.exception() is None:
        discard(list(prefetch.result()[1].values()))


def request_error(error: FerryError) -> inference_pb2.RequestError:
    return inference_pb2.RequestError(code=error.code.value[0], message=error.message, reason=error.reason)


def request_failure(where: str, error: BaseException) -> FerryError:
    """How a request whose handling raised `error` failed, as its caller sees it; `where` names the endpoint."""
    if isinstance(error, FerryError):  # the app's own, or a refused download or encode: its status passes through
        return error
    if isinstance(error, (asyncio.CancelledError, RequestCancelled)):
        return Cancelled("cancelled")
    if isinstance(error, ValidationError):
        return HandlerFailed(f"the handler's output does not match its model: {error}", reason="BAD_OUTPUT")
    # The handler's own bug: INTERNAL with its message; the runner stays healthy.
    log.error("handler %s failed", where, exc_info=error)
    return HandlerFailed(f"{type(error).__name__}: {error}")


class AppRunner:
    def __init__(
        self,
        app_class: type[App],
        *,
        workers: ThreadPoolExecutor,
        services: ServiceClients | None = None,
        keep_finished: int = 10_000,
    ) -> None:
        self.spec: AppSpec = describe(app_class)
        self.app = app_class()
        self._threads = workers
        self._waiting: list[RequestRecord] = []
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._keep_finished = keep_finished
        self.records: dict[str, RequestRecord] = {}
        self.services = services or ServiceClients()

    async def start(self) -> None:
        """Run `setup()` once, then start the workers."""
        # setup() reaches the stack hosting it, as handlers do: weights download through its downloader.
        with request_scope(RequestScope(stack=self.services.target)):
            if self.spec.setup_is_async:
                # App.setup is typed `def`: an app may override it with `async def` (setup_is_async).
                await self.app.setup()  # type: ignore[func-returns-value, misc]
            else:
                copied = contextvars.copy_context()  # carries the scope into the thread
                await asyncio.get_running_loop().run_in_executor(self._threads, copied.run, self.app.setup)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.spec.max_concurrency)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for record in list(self.records.values()):
            if record.state != COMPLETED:
                record.cancel_flag.set()
                record.finish(error=Cancelled("the server is shutting down"))

    # -- requests ------------------------------------------------------------------------

    def validate(self, path: str, input_json: str) -> tuple[EndpointSpec, BaseModel]:
        endpoint = self.spec.endpoints.get(path or "/")
        if endpoint is None or endpoint.realtime:
            raise NotFound(f"app {self.spec.app_id!r} has no endpoint {path or '/'!r}", reason="UNKNOWN_ENDPOINT")
        return endpoint, parse_input(endpoint.input_model, input_json)

    def submit(self, path: str, input_json: str, expires_in: int | None = None) -> RequestRecord:
        endpoint, model = self.validate(path, input_json)
        record = RequestRecord(uuid.uuid4().hex, endpoint, model, expires_in)
        self.records[record.request_id] = record
        self._waiting.append(record)
        self._wakeup.set()
        self._prefetch_next()
        self._forget_old()
        return record

    def position(self, record: RequestRecord) -> int:
        return self._waiting.index(record) if record in self._waiting else 0

    def cancel(self, record: RequestRecord) -> tuple[inference_pb2.RequestState.ValueType, bool]:
        previous = record.state
        if previous == COMPLETED:
            return previous, False
        if record in self._waiting:
            self._waiting.remove(record)
            self._announce_positions()
            self._prefetch_next()
        record.cancel_flag.set()
        if record.task is not None:
            record.task.cancel()
        _drop_prefetch(record)
        record.finish(error=Cancelled("cancelled by the caller"))
        return previous, True

    async def events(self, record: RequestRecord) -> AsyncIterator[inference_pb2.StreamResponse]:
        """Everything the request reports from now on, starting with where it stands."""
        queue: asyncio.Queue[inference_pb2.StreamResponse] = asyncio.Queue()
        record.listeners.add(queue)
        try:
            if record.state == QUEUED:
                yield inference_pb2.StreamResponse(
                    request_id=record.request_id, queued=inference_pb2.QueuedEvent(position=self.position(record))
                )
            elif record.state == COMPLETED:
                return
            while True:
                response = await queue.get()
                yield response
                if response.WhichOneof("event") in ("completed", "failed"):
                    return
        finally:
            record.listeners.discard(queue)

    def _forget_old(self) -> None:
        finished = [r for r in self.records.values() if r.state == COMPLETED]
        for record in finished[: max(0, len(finished) - self._keep_finished)]:
            del self.records[record.request_id]

    def _announce_positions(self) -> None:
        for position, waiting in enumerate(self._waiting):
            waiting.publish(inference_pb2.StreamResponse(queued=inference_pb2.QueuedEvent(position=position)))

    # -- execution -----------------------------------------------------------------------

    async def _work(self) -> None:
        """One slot: take the next request, hold the slot while its handler runs, then take the next.

        The slot (the GPU) covers the handler only. The next request's inputs
        download while this one's handler runs, and this one's outputs encode
        while the next one's handler runs.
        """
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            record = self._waiting.pop(0)
            self._announce_positions()
            record.task = asyncio.create_task(self._execute(record))
            self._prefetch_next()
            returned = asyncio.ensure_future(record.handler_returned.wait())
            try:
                # A cancelled sync handler's task ends only once its thread has returned.
                await asyncio.wait({record.task, returned}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                returned.cancel()

    def _prefetch_next(self) -> None:
        if not (self.spec.download_inputs and self._waiting):
            return
        upcoming = self._waiting[0]
        if upcoming.prefetch is None and input_urls(upcoming.input):
            self._downloads(upcoming)

    def _downloads(self, record: RequestRecord) -> asyncio.Task[tuple[InputFiles, dict[str, Path]]]:
        """The request's input downloads, started now unless they were prefetched."""
        if record.prefetch is None:
            record.prefetch = asyncio.create_task(download_inputs(self.services.client, record.input))
        return record.prefetch

    def _context(self, record: RequestRecord) -> RequestContext:
        loop = asyncio.get_running_loop()

        def on_progress(current: float, total: float, message: str) -> None:
            def publish() -> None:
                record.progress = inference_pb2.Progress(current=current, total=total, message=message)
                record.publish(
                    inference_pb2.StreamResponse(in_progress=inference_pb2.InProgressEvent(progress=record.progress))
                )

            loop.call_soon_threadsafe(publish)

        def on_log(message: str, level: str) -> None:
            line = inference_pb2.LogLine(level=level, message=message)
            line.time.FromNanoseconds(time.time_ns())

            def publish() -> None:
                record.logs.append(line)
                record.publish(inference_pb2.StreamResponse(in_progress=inference_pb2.InProgressEvent(logs=[line])))

            loop.call_soon_threadsafe(publish)

        def on_partial(output: dict[str, Any]) -> None:
            response = inference_pb2.StreamResponse(
                partial_output=inference_pb2.PartialOutputEvent(output_json=json.dumps(output))
            )
            loop.call_soon_threadsafe(record.publish, response)

        return RequestContext(
            record.request_id,
            on_progress=on_progress,
            on_log=on_log,
            on_partial=on_partial,
            cancelled=record.cancel_flag,
        )

    async def _execute(self, record: RequestRecord) -> None:
        if record.state == COMPLETED:  # cancelled between the queue and here
            return
        record.state = IN_PROGRESS
        record.publish(inference_pb2.StreamResponse(in_progress=inference_pb2.InProgressEvent()))
        endpoint = record.endpoint
        context = self._context(record)
        downloaded: dict[str, Path] = {}
        deadline = asyncio.timeout(self.spec.request_timeout_seconds)
        try:
            async with deadline:
                if self.spec.download_inputs:
                    context.input_files, downloaded = await self._downloads(record)
                scope = RequestScope(record.expires_in, downloaded, record.cancel_flag, self.services.target)
                with request_scope(scope):
                    try:
                        result = await self.call_handler(endpoint, record.input, context)
                    finally:
                        record.handler_returned.set()
                result = await encode_outputs(self.services.client, endpoint.output_model, result, record.expires_in)
            output = (
                result if isinstance(result, endpoint.output_model) else endpoint.output_model.model_validate(result)
            )
            record.finish(output_json=output.model_dump_json())
        except (asyncio.CancelledError, RequestCancelled):
            record.finish(error=Cancelled("cancelled"))
        except Exception as error:  # noqa: BLE001 (whatever the handler raised fails its request, not the runner)
            if isinstance(error, TimeoutError) and deadline.expired():
                limit = self.spec.request_timeout_seconds
                record.finish(
                    error=DeadlineExceeded(
                        f"the request ran past {limit:g} s, the app's limit", reason="REQUEST_TIMEOUT"
                    )
                )
            else:
                record.finish(error=request_failure(f"{self.spec.app_id}{endpoint.path}", error))
        finally:
            context.close()  # a thread the handler left behind cannot report into a finished request
            discard(list(downloaded.values()))

    async def call_handler(self, endpoint: EndpointSpec, input: BaseModel, context: RequestContext) -> Any:
        """The handler's return value: awaited on the loop, or from a worker thread for a sync handler.

        Cancelling the caller cancels an async handler; a sync one gets its
        context's cancel flag, and this returns only once its thread has.
        """
        handler = getattr(self.app, endpoint.handler_name)
        args, kwargs = endpoint.arguments(input, context)
        if endpoint.is_async:
            with using_context(context):
                return await handler(*args, **kwargs)
        copied = contextvars.copy_context()  # carries the request scope into the thread

        def call() -> Any:
            with using_context(context):
                return handler(*args, **kwargs)

        future = asyncio.get_running_loop().run_in_executor(self._threads, copied.run, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            context.cancel()
            await asyncio.gather(future, return_exceptions=True)  # the slot frees when the thread does
            raise
