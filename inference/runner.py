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
from typing import Any

import grpc
from pydantic import BaseModel, ValidationError

from ferry.errors import FerryError as SdkError
from ferry.inference.app import App, AppSpec, EndpointSpec, describe
from ferry.inference.context import RequestCancelled, RequestContext, using_context
from ferry.services.errors import Cancelled, FerryError, InvalidArgument, NotFound
from ferry.v1 import inference_pb2

log = logging.getLogger(__name__)

QUEUED = inference_pb2.REQUEST_STATE_QUEUED
IN_PROGRESS = inference_pb2.REQUEST_STATE_IN_PROGRESS
COMPLETED = inference_pb2.REQUEST_STATE_COMPLETED


class HandlerFailed(FerryError):
    code = grpc.StatusCode.INTERNAL
    reason = "HANDLER_FAILED"


@dataclass
class RequestRecord:
    request_id: str
    endpoint: EndpointSpec
    input: BaseModel
    state: int = QUEUED
    logs: list[inference_pb2.LogLine] = field(default_factory=list)
    progress: inference_pb2.Progress | None = None
    output_json: str = ""
    error: FerryError | None = None
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
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


def request_error(error: FerryError) -> inference_pb2.RequestError:
    return inference_pb2.RequestError(code=error.code.value[0], message=error.message, reason=error.reason)


def _validation_message(error: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in error.errors()]
    return "invalid input: " + "; ".join(problems)


class AppRunner:
    def __init__(self, app_class: type[App], *, workers: ThreadPoolExecutor, keep_finished: int = 10_000) -> None:
        self.spec: AppSpec = describe(app_class)
        self.app = app_class()
        self._threads = workers
        self._waiting: list[RequestRecord] = []
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._keep_finished = keep_finished
        self.records: dict[str, RequestRecord] = {}

    async def start(self) -> None:
        """Run `setup()` once, then start the workers."""
        if self.spec.setup_is_async:
            await self.app.setup()
        else:
            await asyncio.get_running_loop().run_in_executor(self._threads, self.app.setup)
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
        try:
            document = json.loads(input_json or "{}")
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"input is not JSON: {error}", reason="INVALID_JSON") from None
        try:
            return endpoint, endpoint.input_model.model_validate(document)
        except ValidationError as error:
            raise InvalidArgument(_validation_message(error), reason="INVALID_INPUT") from None

    def submit(self, path: str, input_json: str) -> RequestRecord:
        endpoint, model = self.validate(path, input_json)
        record = RequestRecord(uuid.uuid4().hex, endpoint, model)
        self.records[record.request_id] = record
        self._waiting.append(record)
        self._wakeup.set()
        self._forget_old()
        return record

    def position(self, record: RequestRecord) -> int:
        return self._waiting.index(record) if record in self._waiting else 0

    def cancel(self, record: RequestRecord) -> tuple[int, bool]:
        previous = record.state
        if previous == COMPLETED:
            return previous, False
        if record in self._waiting:
            self._waiting.remove(record)
            self._announce_positions()
        record.cancel_flag.set()
        if record.task is not None:
            record.task.cancel()
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
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            record = self._waiting.pop(0)
            self._announce_positions()
            record.task = asyncio.create_task(self._execute(record))
            try:
                await asyncio.shield(record.task)
            except asyncio.CancelledError:
                if not record.task.done():  # the request was cancelled, not this worker
                    await asyncio.gather(record.task, return_exceptions=True)

    def _context(self, record: RequestRecord) -> RequestContext:
        loop = asyncio.get_running_loop()

        def on_progress(current: float, total: float, message: str) -> None:
            def publish() -> None:
                record.progress = inference_pb2.Progress(current=current, total=total, message=message)
                record.publish(inference_pb2.StreamResponse(in_progress=inference_pb2.InProgressEvent(progress=record.progress)))

            loop.call_soon_threadsafe(publish)

        def on_log(message: str, level: str) -> None:
            line = inference_pb2.LogLine(level=level, message=message)
            line.time.FromNanoseconds(time.time_ns())

            def publish() -> None:
                record.logs.append(line)
                record.publish(inference_pb2.StreamResponse(in_progress=inference_pb2.InProgressEvent(logs=[line])))

            loop.call_soon_threadsafe(publish)

        def on_partial(output: dict[str, Any]) -> None:
            response = inference_pb2.StreamResponse(partial_output=inference_pb2.PartialOutputEvent(output_json=json.dumps(output)))
            loop.call_soon_threadsafe(record.publish, response)

        return RequestContext(record.request_id, on_progress=on_progress, on_log=on_log, on_partial=on_partial, cancelled=record.cancel_flag)

    async def _execute(self, record: RequestRecord) -> None:
        if record.state == COMPLETED:  # cancelled between the queue and here
            return
        record.state = IN_PROGRESS
        record.publish(inference_pb2.StreamResponse(in_progress=inference_pb2.InProgressEvent()))
        endpoint = record.endpoint
        context = self._context(record)
        handler = getattr(self.app, endpoint.handler_name)
        args: tuple[Any, ...] = (record.input, context) if endpoint.takes_context else (record.input,)
        try:
            if endpoint.is_async:
                with using_context(context):
                    result = await handler(*args)
            else:
                copied = contextvars.copy_context()

                def call() -> Any:
                    with using_context(context):
                        return handler(*args)

                future = asyncio.get_running_loop().run_in_executor(self._threads, copied.run, call)
                try:
                    result = await asyncio.shield(future)
                except asyncio.CancelledError:
                    record.cancel_flag.set()
                    await asyncio.gather(future, return_exceptions=True)  # the slot frees when the thread does
                    raise
            output = result if isinstance(result, endpoint.output_model) else endpoint.output_model.model_validate(result)
            record.finish(output_json=output.model_dump_json())
        except (asyncio.CancelledError, RequestCancelled):
            record.finish(error=Cancelled("cancelled"))
        except FerryError as error:
            record.finish(error=error)
        except SdkError as error:  # a refused download or encode inside the handler: its status passes through
            passed = FerryError(error.message, reason=error.reason or "UPSTREAM_ERROR")
            passed.code = error.code
            record.finish(error=passed)
        except ValidationError as error:
            record.finish(error=HandlerFailed(f"the handler's output does not match its model: {error}"))
        except Exception as error:  # the handler's own bug: INTERNAL with its message; the runner stays healthy
            log.exception("handler %s%s failed", self.spec.app_id, endpoint.path)
            record.finish(error=HandlerFailed(f"{type(error).__name__}: {error}"))
        finally:
            context.close()  # a thread the handler left behind cannot report into a finished request
