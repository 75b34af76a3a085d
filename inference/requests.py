"""Any request, from any replica: submit, status, result, cancel and its events, read from the shared queue.

What the InferenceService answers about a request needs nothing of the replica
that runs it: the queue holds where it waits, what it reported and how it
ended. Only `submit` needs the app here, to refuse what no handler could run
before it is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace

import grpc

from ferry.errors import FailedPrecondition, FerryError, InvalidArgument, NotFound
from ferry.inference.queue.base import FINISHED, NewRequest, RequestQueue, State, Status, final_status
from ferry.inference.request_events import LogLine, Progress, RequestEvent, decode
from ferry.inference.runner import AppRunner
from ferry.inference.webhooks import Delivery, WebhookSender, delivery_of
from ferry.services import tracing

MAX_IDEMPOTENCY_KEY_CHARS = 256
# How often a queued request's Stream re-reads its position.
POSITION_SECONDS = 0.1


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Finished:
    status: Status


StreamEvent = Queued | RequestEvent | Finished


@dataclass(frozen=True)
class Report:
    """A request's status with what its event log says of it (its latest progress, its log lines), and where
    its webhook stands."""

    status: Status
    progress: Progress | None
    logs: list[LogLine]
    webhook: Delivery | None


class Requests:
    def __init__(
        self, queue: RequestQueue, runners: Mapping[str, AppRunner], webhooks: WebhookSender | None = None
    ) -> None:
        self.queue = queue
        self.runners = runners
        self.webhooks = webhooks

    def runner(self, app_id: str) -> AppRunner:
        try:
            return self.runners[app_id]
        except KeyError:
            raise NotFound(
                f"no app {app_id!r} (hosted: {', '.join(sorted(self.runners)) or 'none'})", reason="UNKNOWN_APP"
            ) from None

    async def submit(
        self,
        request: NewRequest,
        *,
        webhook_url: str = "",
        idempotency_key: str = "",
    ) -> str:
        """Queue `request` once its app here has validated it; its id. A webhook is queued first (a crash between
        the two loses nothing); a retried submit with the same idempotency key returns the first one's id."""
        self.runner(request.app_id).validate(request.path, request.input_json)
        request_id = idempotent_id(request.app_id, idempotency_key) if idempotency_key else uuid.uuid4().hex
        if webhook_url:
            if self.webhooks is None:
                raise FailedPrecondition("this server sends no webhooks", reason="NO_WEBHOOK_SECRET")
            self.webhooks.check(webhook_url)
            await self.webhooks.submit(request_id, webhook_url)
        # Random per request: its outputs' object ids derive from it, and an id derived from an idempotency
        # key alone would let anyone who knows the key name the outputs' URLs. The submitter's trace context
        # goes along: whichever replica runs the request continues its trace.
        queued = replace(request, output_salt=secrets.token_urlsafe(16), trace_parent=tracing.traceparent())
        return await self.queue.submit(queued, request_id)

    async def report(self, request_id: str) -> Report:
        status = await self.queue.status(request_id)
        progress: Progress | None = None
        logs: list[LogLine] = []
        for entry in await self.queue.events(request_id):
            event = decode(entry)
            if isinstance(event, Progress):
                progress = event
            elif isinstance(event, LogLine):
                logs.append(event)
        return Report(status, progress, logs, await delivery_of(self.queue, request_id))

    async def result(self, request_id: str, wait: bool) -> str:
        """The output JSON; the request's failure as its FerryError; FailedPrecondition while it runs unless `wait`."""
        status = await self.queue.status(request_id)
        if status.state != State.COMPLETED:
            if not wait:
                raise FailedPrecondition(
                    "the request has not completed; GetStatus tells where it is", reason="NOT_COMPLETED"
                )
            status = await self.outcome(request_id)
        return output_of(status)

    async def outcome(self, request_id: str) -> Status:
        """The request's final status, once it has one."""
        return await final_status(self.queue, request_id)

    async def cancel(self, request_id: str) -> tuple[State, bool]:
        return await self.queue.cancel(request_id)

    async def events(self, request_id: str) -> AsyncIterator[StreamEvent]:
        """Where the request stands, each move up the queue while it waits, what it reports, then its end.

        A request already completed gives what it reported, then its end."""
        status = await self.queue.status(request_id)
        if status.state == State.COMPLETED:
            # What it reported first (logs, partial outputs), as a caller that began following sooner saw it:
            # a quick request often ends before its caller's Stream arrives (the playground's did, under load).
            for entry in await self.queue.events(request_id):
                if entry.kind != FINISHED and (reported := decode(entry)) is not None:
                    yield reported
            yield Finished(status)
            return
        merged: asyncio.Queue[StreamEvent | FerryError | None] = asyncio.Queue()
        positions = asyncio.create_task(self._positions(status, merged)) if status.state == State.QUEUED else None
        follow = asyncio.create_task(self._follow(request_id, merged))
        try:
            while (event := await merged.get()) is not None:
                if isinstance(event, FerryError):  # the queue could not be read (unreachable, or the record expired)
                    raise event
                if not isinstance(event, Queued) and positions is not None:
                    positions.cancel()  # it started: no more places to report
                    positions = None
                yield event
        finally:
            for task in (positions, follow):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, FerryError):  # follow's errors came through
                        await task

    async def _positions(self, status: Status, out: asyncio.Queue[StreamEvent | FerryError | None]) -> None:
        last = status.position
        await out.put(Queued(last))
        while status.state == State.QUEUED:
            await asyncio.sleep(POSITION_SECONDS)
            status = await self.queue.status(status.request_id)
            if status.state == State.QUEUED and status.position != last:
                last = status.position
                await out.put(Queued(last))

    async def _follow(self, request_id: str, out: asyncio.Queue[StreamEvent | FerryError | None]) -> None:
        try:
            async for entry in self.queue.follow(request_id):
                if entry.kind == FINISHED:
                    await out.put(Finished(await self.queue.status(request_id)))
                    break
                if (event := decode(entry)) is not None:
                    await out.put(event)
        except FerryError as error:
            await out.put(error)
        finally:
            await out.put(None)


def idempotent_id(app_id: str, key: str) -> str:
    """The request id an idempotency key stands for: one per app and key, so a retried submit finds the first."""
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidArgument(
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters", reason="BAD_IDEMPOTENCY_KEY"
        )
    return "key-" + hashlib.sha256(f"{app_id}\0{key}".encode()).hexdigest()[:32]


def output_of(status: Status) -> str:
    """A completed request's output JSON, or its failure raised as the FerryError it was."""
    if status.failure is not None:
        failure = status.failure
        raise FerryError.of(grpc.StatusCode[failure.code], failure.message, failure.reason)
    return status.output_json
