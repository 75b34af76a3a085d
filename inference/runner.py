"""Runs one app's requests from the shared queue: a slot per `max_concurrency`, leases, events, cancellation.

Pull, never push: each slot takes a request from the queue only when it is
free, so the GPU behind the slots is never over-committed; a slot is held while
the handler runs, and freed while its outputs encode. The runner keeps no
request state beyond what it is running: where a request waits, what it
reported and how it ended live in the queue (inference/queue), which any
replica reads.

While every slot is busy, the request next in line (peeked, not taken) has its
input downloads started, so they overlap the running handler; whichever replica
takes it, the downloads it does not use are discarded.

A running request's lease is renewed every third of its length; a replica that
dies stops renewing, and another takes the request again (handlers run at least
once). Sync handlers run in a worker thread; cancelling one sets the flag its
context exposes, and its slot is freed only once the thread returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ferry.backoff import backoff_seconds
from ferry.errors import Cancelled, DeadlineExceeded, FerryError, Internal, NotFound, Unavailable
from ferry.inference.app import App, AppSpec, EndpointSpec, describe
from ferry.inference.context import RequestCancelled, RequestContext, using_context
from ferry.inference.input_parsing import parse_input
from ferry.inference.inputs import InputFiles, discard, download_inputs, input_urls
from ferry.inference.outputs import encode_outputs
from ferry.inference.queue.base import Claim, Failure, RequestQueue, State
from ferry.inference.queue.leases import keep_lease
from ferry.inference.request_events import LogLine, PartialOutput, Progress, RequestEvent, Started, encode
from ferry.inference.services import ServiceClients
from ferry.request_scope import RequestScope, request_scope
from ferry.services import tracing
from ferry.services.metrics import StackMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a free slot waits on the queue per call (it calls again at once; a stop cancels the wait). Each
# call is a wakeup of the idle replica: at 1 s, 32 free slots woke its event loop 32 times a second.
TAKE_SECONDS = 30.0
# How often a busy replica looks for a new request next in line to prefetch.
PEEK_SECONDS = 0.1

Downloads = asyncio.Task[tuple[InputFiles, dict[str, Path]]]


class HandlerFailed(Internal):
    reason = "HANDLER_FAILED"


def _output_key(claim: Claim) -> str | None:
    """What the request's stored outputs' ids derive from, the same on every run of it; None: fresh ids
    (a request queued by a version that gave it no salt)."""
    salt = claim.request.output_salt
    return f"{salt}/{claim.request_id}" if salt else None


def failure_of(error: FerryError) -> Failure:
    return Failure(error.code.name, error.message, error.reason)


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


@dataclass
class Running:
    """A request this replica took, while it runs here."""

    claim: Claim
    endpoint: EndpointSpec
    input: BaseModel
    downloads: Downloads | None
    cancel_flag: threading.Event = field(default_factory=threading.Event)  # the handler's context sees it
    # Taken from this replica (cancelled by a caller, its lease lost, the runner stopping): whoever took it
    # decides how it ends, so this replica records nothing. A time limit sets cancel_flag alone.
    withdrawn: bool = False
    # Set when the handler has returned: the slot is free while outputs encode.
    handler_returned: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def request_id(self) -> str:
        return self.claim.request_id

    def withdraw(self) -> None:
        self.withdrawn = True
        self.cancel_flag.set()
        if self.task is not None:
            self.task.cancel()


class EventWriter:
    """Appends one request's events to its log in the order they happened, off the handler's path.

    Progress reports that pile up while an append is in flight collapse to the latest.
    """

    def __init__(self, queue: RequestQueue, request_id: str) -> None:
        self._queue, self._request_id = queue, request_id
        self._pending: list[RequestEvent] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._drain())

    def put(self, event: RequestEvent) -> None:
        if isinstance(event, Progress) and self._pending and isinstance(self._pending[-1], Progress):
            self._pending[-1] = event
        else:
            self._pending.append(event)
        self._wakeup.set()

    async def _drain(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                event = self._pending.pop(0)
                try:
                    await self._queue.append(self._request_id, *encode(event))
                except FerryError as error:  # the queue is unreachable: progress is not worth a retry
                    log.warning("dropped an event of %s: %s", self._request_id, error)
            if self._closing:
                return

    async def close(self) -> None:
        """Return once every event put so far is in the log."""
        self._closing = True
        self._wakeup.set()
        await self._task


class AppRunner:
    def __init__(
        self,
        app_class: type[App],
        *,
        queue: RequestQueue,
        workers: ThreadPoolExecutor,
        services: ServiceClients | None = None,
        metrics: StackMetrics | None = None,
    ) -> None:
        self.spec: AppSpec = describe(app_class)
        self.metrics = metrics or StackMetrics()
        self.app = app_class()
        self.queue = queue
        self._threads = workers
        self.services = services or ServiceClients()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self.running: dict[str, Running] = {}
        self._busy = 0
        self._all_busy = asyncio.Event()  # set while every slot's handler runs: only then is there a next to prefetch
        self._prefetched: tuple[str, Downloads] | None = None

    @property
    def app_id(self) -> str:
        return self.spec.app_id

    async def start(self) -> None:
        """Run `setup()` once, then start taking requests."""
        # setup() reaches the stack hosting it, as handlers do: weights download through its downloader.
        with request_scope(RequestScope(stack=self.services.target)):
            if self.spec.setup_is_async:
                # App.setup is typed `def`: an app may override it with `async def` (setup_is_async).
                await self.app.setup()  # type: ignore[func-returns-value, misc]
            else:
                copied = contextvars.copy_context()  # carries the scope into the thread
                await asyncio.get_running_loop().run_in_executor(self._threads, copied.run, self.app.setup)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.spec.max_concurrency)]
        if self.spec.download_inputs:
            self._tasks.append(asyncio.create_task(self._prefetch_next()))
        self._listener = asyncio.create_task(self._hear_cancellations())

    @property
    def busy(self) -> int:
        """Slots whose handler is running now."""
        return self._busy

    async def stop(self, grace_seconds: float = 0) -> None:
        """Stop taking requests; let the handlers running here finish for up to `grace_seconds`, then stop them.

        The requests of handlers stopped are not failed: they go back to the front
        of the queue (released), and another replica (or this one, restarted) runs
        them again without counting the run cut short as an attempt. If the queue
        cannot be told, their leases lapse instead and the run counts.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._drop_prefetch()
        finishing = [r.task for r in self.running.values() if r.task is not None]
        if finishing and grace_seconds > 0:
            await asyncio.wait(finishing, timeout=grace_seconds)  # cancels still reach them meanwhile
        stopped = list(self.running.values())
        for running in stopped:
            running.withdraw()
        if self._listener is not None:
            self._listener.cancel()
        await asyncio.gather(*finishing, *([self._listener] if self._listener else []), return_exceptions=True)
        # The queue refuses a cancelled one, or one whose lease lapsed meanwhile: not this replica's to hand back.
        for running in stopped:
            await self._release(running.claim)

    async def _release(self, claim: Claim) -> None:
        try:
            await self.queue.release(claim.request_id, claim.lease)
        except FerryError as error:
            log.warning("%s: cannot hand %s back (%s); its lease will lapse", self.app_id, claim.request_id, error)

    def validate(self, path: str, input_json: str) -> tuple[EndpointSpec, BaseModel]:
        """The endpoint and its parsed input; `NotFound` / `InvalidArgument` for what no handler could run."""
        endpoint = self.spec.endpoints.get(path or "/")
        if endpoint is None or endpoint.realtime:
            raise NotFound(f"app {self.spec.app_id!r} has no endpoint {path or '/'!r}", reason="UNKNOWN_ENDPOINT")
        return endpoint, parse_input(endpoint.input_model, input_json)

    # -- taking requests -----------------------------------------------------------------

    async def _work(self) -> None:
        """One slot: take a request, hold the slot while its handler runs, then take the next.

        The slot (the GPU) covers the handler only: this request's outputs encode
        while the next one's handler runs.
        """
        while True:
            claim = await self._retrying("take a request", lambda: self.queue.take(self.app_id, TAKE_SECONDS))
            if claim is None:
                continue
            running = await self._begin(claim)
            if running is None or running.task is None:
                continue
            self._busy += 1
            if self._busy == self.spec.max_concurrency:
                self._all_busy.set()
            returned = asyncio.ensure_future(running.handler_returned.wait())
            try:
                # A cancelled sync handler's task ends only once its thread has returned.
                await asyncio.wait({running.task, returned}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                returned.cancel()
                self._busy -= 1
                self._all_busy.clear()

    async def _begin(self, claim: Claim) -> Running | None:
        """Start running a claimed request; None when its input cannot run here (it is failed instead)."""
        try:
            endpoint, model = self.validate(claim.request.path, claim.request.input_json)
        except FerryError as error:  # submitted through a replica hosting another version of the app
            await self._finish(claim, failure=failure_of(error))
            return None
        running = Running(claim, endpoint, model, self._take_prefetched(claim.request_id))
        self.running[claim.request_id] = running
        with self._naming(claim.request_id):  # the task copies the scope: every line it logs names the request
            running.task = asyncio.create_task(self._traced(running) if tracing.ENABLED else self._execute(running))
        return running

    async def _hear_cancellations(self) -> None:
        """Stop a handler here when its request is cancelled on any replica."""
        while True:
            try:
                async for request_id in self.queue.cancellations():
                    if (running := self.running.get(request_id)) is not None:
                        running.withdraw()  # the queue completed it CANCELLED: its end is counted here
                        self.metrics.requests.labels(self.app_id, running.endpoint.path, "CANCELLED").inc()
            except FerryError as error:
                log.warning("%s: cannot hear cancellations (%s); retrying", self.app_id, error)
                await asyncio.sleep(1)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` until the queue answers: while it is unreachable, waiting with backoff."""
        retry = 0
        while True:
            try:
                return await call()
            except Unavailable as error:
                delay, retry = backoff_seconds(retry, 0.1, 2.0), retry + 1
                log.warning("%s: cannot %s (%s); again in %.1f s", self.app_id, what, error, delay)
                await asyncio.sleep(delay)

    # -- prefetching ---------------------------------------------------------------------

    async def _prefetch_next(self) -> None:
        """While every slot is busy, download the inputs of the request next in line."""
        while True:
            await asyncio.sleep(PEEK_SECONDS)
            if self._busy < self.spec.max_concurrency:
                # A free slot takes the next request, with what was prefetched for it (`_take_prefetched`). Not
                # polled: an idle replica does not wake for it; but a prefetch held meanwhile is dropped once its
                # request has ended (cancelled while queued, or run by a slot that fetched its inputs itself).
                if self._prefetched is None:
                    await self._all_busy.wait()
                else:
                    await self._drop_prefetch_if_ended(self._prefetched[0])
                continue
            try:
                head = await self.queue.peek(self.app_id)
            except FerryError:
                continue
            if self._busy < self.spec.max_concurrency:
                continue  # a slot freed while peeking: it may be taking that very request, inputs and all
            if head is None or (self._prefetched is not None and self._prefetched[0] != head[0]):
                self._drop_prefetch()  # taken elsewhere, or cancelled
            if head is None or self._prefetched is not None:
                continue
            request_id, request = head
            try:
                _, model = self.validate(request.path, request.input_json)
            except FerryError:
                continue
            if input_urls(model):
                # Downloads begun before the request is taken belong to its trace too.
                with self._naming(request_id), tracing.continued(tracing.remote_parent(request.trace_parent)):
                    downloads = asyncio.create_task(download_inputs(self.services.client, model))
                self._prefetched = (request_id, downloads)

    async def _drop_prefetch_if_ended(self, request_id: str) -> None:
        try:
            ended = (await self.queue.status(request_id)).state == State.COMPLETED
        except NotFound:
            ended = True  # completed and expired
        except FerryError:
            return
        if ended and self._prefetched is not None and self._prefetched[0] == request_id:
            self._drop_prefetch()

    def _take_prefetched(self, request_id: str) -> Downloads | None:
        """The inputs prefetched for `request_id`. A prefetch for another request is dropped: a slot takes the
        next in line, so that one was taken elsewhere, cancelled or overtaken."""
        if self._prefetched is None:
            return None
        if self._prefetched[0] != request_id:
            self._drop_prefetch()
            return None
        downloads = self._prefetched[1]
        self._prefetched = None
        return downloads

    def _drop_prefetch(self) -> None:
        """Stop a prefetch no one will use, or delete what it already fetched."""
        if self._prefetched is None:
            return
        downloads = self._prefetched[1]
        self._prefetched = None
        if not downloads.done():
            downloads.cancel()  # download_inputs removes its partial work
        elif not downloads.cancelled() and downloads.exception() is None:
            discard(list(downloads.result()[1].values()))

    # -- running -------------------------------------------------------------------------

    def _naming(self, request_id: str) -> contextlib.AbstractContextManager[RequestScope]:
        """A scope that names the request in the log lines emitted inside it (and changes nothing else)."""
        return request_scope(RequestScope(request_id=request_id, app=self.app_id))

    def _context(self, running: Running, events: EventWriter) -> RequestContext:
        loop = asyncio.get_running_loop()
        # The handler's lines reach the server's log too, naming the request from whatever thread logs them.
        app_log = logging.getLogger(f"ferry.inference.apps.{self.app_id}")
        names = {"request_id": running.request_id, "app": self.app_id}

        def on_progress(current: float, total: float, message: str) -> None:
            loop.call_soon_threadsafe(events.put, Progress(current, total, message))

        def on_log(message: str, level: str) -> None:
            loop.call_soon_threadsafe(events.put, LogLine(level, message, time.time_ns()))
            app_log.log(logging.getLevelName(level), "%s", message, extra=names)

        def on_partial(output: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put, PartialOutput(json.dumps(output)))

        return RequestContext(
            running.request_id,
            on_progress=on_progress,
            on_log=on_log,
            on_partial=on_partial,
            cancelled=running.cancel_flag,
        )

    async def _traced(self, running: Running) -> None:
        """`_execute` under a `ferry.run` span continuing its submitter's trace (the context its queue record
        carries, from any replica), after a `ferry.queue_wait` span for the time it waited to be taken."""
        claim = running.claim
        parent = tracing.remote_parent(claim.request.trace_parent)
        if claim.waited_seconds is not None:
            submitted_at = time.time() - claim.waited_seconds
            tracing.past_span("ferry.queue_wait", submitted_at, parent, {"ferry.app": self.app_id})
        attributes: tracing.Attributes = {
            "ferry.app": self.app_id,
            "ferry.endpoint": running.endpoint.path,
            "ferry.request_id": claim.request_id,
            "ferry.attempt": claim.attempt,
        }
        with tracing.continued(parent), tracing.span("ferry.run", attributes):
            await self._execute(running)

    async def _execute(self, running: Running) -> None:
        claim, endpoint = running.claim, running.endpoint
        began = time.perf_counter()
        if claim.attempt > 1:
            self.metrics.redeliveries.labels(self.app_id).inc()
        if claim.waited_seconds is not None:
            self.metrics.queue_wait_seconds.labels(self.app_id, endpoint.path).observe(claim.waited_seconds)
        expires_in = claim.request.expires_in
        events = EventWriter(self.queue, running.request_id)
        events.put(Started())
        lease = asyncio.create_task(keep_lease(self.queue, claim, running.withdraw))
        context = self._context(running, events)
        downloaded: dict[str, Path] = {}
        deadline = asyncio.timeout(self.spec.request_timeout_seconds)
        output_json, failure = "", None
        try:
            async with deadline:
                if self.spec.download_inputs:
                    if running.downloads is None:
                        running.downloads = asyncio.create_task(download_inputs(self.services.client, running.input))
                    context.input_files, downloaded = await running.downloads
                scope = RequestScope(
                    expires_in, downloaded, running.cancel_flag, self.services.target, running.request_id, self.app_id
                )
                with request_scope(scope), tracing.span("ferry.handler"):
                    try:
                        result = await self.call_handler(endpoint, running.input, context)
                    finally:
                        running.handler_returned.set()
                result = await encode_outputs(
                    self.services.client, endpoint.output_model, result, expires_in, _output_key(claim)
                )
            output = (
                result if isinstance(result, endpoint.output_model) else endpoint.output_model.model_validate(result)
            )
            output_json = output.model_dump_json()
        except (asyncio.CancelledError, RequestCancelled):
            failure = failure_of(Cancelled("cancelled"))
        except Exception as error:  # noqa: BLE001 (whatever the handler raised fails its request, not the runner)
            if isinstance(error, TimeoutError) and deadline.expired():
                limit = self.spec.request_timeout_seconds
                message = f"the request ran past {limit:g} s, the app's limit"
                failure = failure_of(DeadlineExceeded(message, reason="REQUEST_TIMEOUT"))
            elif isinstance(error, Cancelled) and not running.cancel_flag.is_set():
                # Nobody cancelled this request: a service it called did (an encoder shutting down mid-call).
                # CANCELLED would read as the caller's own doing; the caller may retry this.
                message = f"a service this request called cancelled the call: {error.message}"
                failure = failure_of(Unavailable(message, reason="UPSTREAM_CANCELLED"))
            else:
                failure = failure_of(request_failure(f"{self.spec.app_id}{endpoint.path}", error))
        finally:
            running.handler_returned.set()
            context.close()  # a thread the handler left behind cannot report into a finished request
            discard(list(downloaded.values()))
            lease.cancel()
        try:
            await events.close()
            if not running.withdrawn:
                await self._finish(claim, output_json, failure)
                outcome = failure.code if failure else "OK"
                tracing.record_outcome(outcome)
                self.metrics.requests.labels(self.app_id, endpoint.path, outcome).inc()
                self.metrics.request_run_seconds.labels(self.app_id, endpoint.path).observe(time.perf_counter() - began)
        finally:
            self.running.pop(running.request_id, None)

    async def _finish(self, claim: Claim, output_json: str = "", failure: Failure | None = None) -> None:
        """Record how the request ended; while the queue is unreachable, keep trying (the lease may lapse)."""
        await self._retrying(
            f"record the end of {claim.request_id}",
            lambda: self.queue.finish(claim.request_id, claim.lease, output_json, failure),
        )

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
