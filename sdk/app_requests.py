"""Calling apps: `run`, `submit` (a handle to poll, stream, wait for or cancel), `subscribe` and `stream`.

Arguments are JSON-compatible dicts; a `pathlib.Path` anywhere in them is a
local file, uploaded first and replaced by its URL. What comes back is typed
(`ferry.events`): `Status` when polling, an `Event` per Stream message. Each
piece has an asyncio twin (`AsyncRequestHandle`, `stream_events_async`,
`subscribe_async`) for `AsyncClient`; what they decide (statuses, events,
errors, when to stop) is shared.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import grpc

from ferry.errors import DeadlineExceeded, FerryError, Unknown, map_rpc_errors
from ferry.events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    InProgress,
    LogLine,
    Progress,
    Queued,
    event_from,
    log_line,
    progress_of,
)
from ferry.keywords import check_keywords
from ferry.v1 import inference_pb2

if TYPE_CHECKING:
    from ferry.client import AsyncClient, Client

_STATE_NAMES = {
    inference_pb2.REQUEST_STATE_QUEUED: "QUEUED",
    inference_pb2.REQUEST_STATE_IN_PROGRESS: "IN_PROGRESS",
    inference_pb2.REQUEST_STATE_COMPLETED: "COMPLETED",
}
# States a request never leaves.
FINAL_STATES = ("COMPLETED", "CANCELLED")

QueueUpdate = Callable[[Queued | InProgress], None]


@dataclass(frozen=True)
class Status:
    state: str  # QUEUED | IN_PROGRESS | COMPLETED (with `error` when it failed) | CANCELLED
    position: int
    logs: list[LogLine]
    progress: Progress | None
    error: FerryError | None


def status_from(response: inference_pb2.GetStatusResponse) -> Status:
    error = FerryError.from_request_error(response.error) if response.HasField("error") else None
    cancelled = error is not None and error.code == grpc.StatusCode.CANCELLED
    return Status(
        "CANCELLED" if cancelled else _STATE_NAMES[response.state],
        response.queue_position,
        [log_line(line) for line in response.logs],
        progress_of(response.progress) if response.HasField("progress") else None,
        error,
    )


def upload_local_files(arguments: Any, client: Client) -> Any:
    """The arguments with every Path replaced by the URL of its upload."""
    if isinstance(arguments, Path):
        return client.upload_file(arguments).url
    if isinstance(arguments, dict):
        return {key: upload_local_files(value, client) for key, value in arguments.items()}
    if isinstance(arguments, (list, tuple)):
        return [upload_local_files(value, client) for value in arguments]
    return arguments


async def upload_local_files_async(arguments: Any, client: AsyncClient) -> Any:
    """The asyncio twin of `upload_local_files`."""
    if isinstance(arguments, Path):
        return (await client.upload_file(arguments)).url
    if isinstance(arguments, dict):
        return {key: await upload_local_files_async(value, client) for key, value in arguments.items()}
    if isinstance(arguments, (list, tuple)):
        return [await upload_local_files_async(value, client) for value in arguments]
    return arguments


def _status_request(request_id: str, with_logs: bool) -> inference_pb2.GetStatusRequest:
    return inference_pb2.GetStatusRequest(request_id=request_id, with_logs=with_logs)


def _result_request(request_id: str) -> inference_pb2.GetResultRequest:
    return inference_pb2.GetResultRequest(request_id=request_id, wait=True)


class RequestHandle:
    """A submitted request: poll it, follow its events, wait for its output, or cancel it."""

    def __init__(self, client: Client, request_id: str) -> None:
        self.client = client
        self.request_id = request_id

    def status(self, with_logs: bool = False) -> Status:
        with map_rpc_errors():
            return status_from(self.client.inference.GetStatus(_status_request(self.request_id, with_logs)))

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the output (raises the request's error)."""
        with map_rpc_errors():
            response = self.client.inference.GetResult(_result_request(self.request_id), timeout=timeout)
        return json.loads(response.output_json)  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """True when the request was still running or queued."""
        with map_rpc_errors():
            return self.client.inference.Cancel(inference_pb2.CancelRequest(request_id=self.request_id)).cancelled

    def stream(self) -> Iterator[Event]:
        """Every event of the request (`ferry.events`): what it reported so far, then live, to its end — from
        whichever replica answers. Leaving the loop early leaves the request running."""
        return stream_events(self.client, inference_pb2.StreamRequest(request_id=self.request_id))

    def iter_events(self, interval: float = 0.2) -> Iterator[Status]:
        """Statuses as the request moves (polled), ending with COMPLETED or CANCELLED."""
        seen: Status | None = None
        while True:
            current = self.status(with_logs=True)
            if current != seen:
                yield current
                seen = current
            if current.state in FINAL_STATES:
                return
            time.sleep(interval)


class AsyncRequestHandle:
    """The asyncio twin of `RequestHandle`."""

    def __init__(self, client: AsyncClient, request_id: str) -> None:
        self.client = client
        self.request_id = request_id

    async def status(self, with_logs: bool = False) -> Status:
        with map_rpc_errors():
            return status_from(await self.client.inference.GetStatus(_status_request(self.request_id, with_logs)))

    async def get(self, timeout: float | None = None) -> dict[str, Any]:
        with map_rpc_errors():
            response = await self.client.inference.GetResult(_result_request(self.request_id), timeout=timeout)
        return json.loads(response.output_json)  # type: ignore[no-any-return]

    async def cancel(self) -> bool:
        with map_rpc_errors():
            return (
                await self.client.inference.Cancel(inference_pb2.CancelRequest(request_id=self.request_id))
            ).cancelled

    def stream(self) -> AsyncIterator[Event]:
        return stream_events_async(self.client, inference_pb2.StreamRequest(request_id=self.request_id))

    async def iter_events(self, interval: float = 0.2) -> AsyncIterator[Status]:
        seen: Status | None = None
        while True:
            current = await self.status(with_logs=True)
            if current != seen:
                yield current
                seen = current
            if current.state in FINAL_STATES:
                return
            await asyncio.sleep(interval)


def stream_events(
    client: Client, request: inference_pb2.StreamRequest, timeout: float | None = None
) -> Iterator[Event]:
    call = client.inference.Stream(request, timeout=timeout)
    try:
        with map_rpc_errors():
            for response in call:
                yield event_from(response)
    finally:
        call.cancel()  # stopping early cancels the request server-side


async def stream_events_async(
    client: AsyncClient, request: inference_pb2.StreamRequest, timeout: float | None = None
) -> AsyncIterator[Event]:
    call = client.inference.Stream(request, timeout=timeout)
    try:
        with map_rpc_errors():
            async for response in call:
                yield event_from(response)
    finally:
        call.cancel()


class RunOptions(TypedDict, total=False):
    """`run`'s keywords: how long the outputs live (seconds), and how long to wait before cancelling."""

    expires_in: int | None
    timeout: float | None


class SubmitOptions(TypedDict, total=False):
    """`submit`'s keywords, the reference client's: how long the outputs live (seconds); where to POST the
    result once it is in (signed per Standard Webhooks; the server needs `--webhook-secret`); a key that makes
    a retried submit return the first one's request id; "low" priority (runs only while no "normal" request
    waits); and `start_timeout` seconds, past which a request not yet started fails DEADLINE_EXCEEDED."""

    expires_in: int | None
    webhook_url: str | None
    idempotency_key: str | None
    priority: Literal["normal", "low"]
    start_timeout: float | None


class SubscribeOptions(TypedDict, total=False):
    """`subscribe`'s keywords, the reference client's.

    `on_enqueue(request_id)` once; `on_queue_update` with each `Queued` and `InProgress` (those with log lines
    only when `with_logs`); past `client_timeout` seconds the request is cancelled and DEADLINE_EXCEEDED raised;
    `expires_in` is how long the request's stored outputs live.
    """

    with_logs: bool
    on_enqueue: Callable[[str], None] | None
    on_queue_update: QueueUpdate | None
    client_timeout: float | None
    expires_in: int | None


class _Subscription:
    """What `subscribe` does with each event, for the sync and async loops alike.

    `client_timeout` is the Stream call's deadline: past it the call ends, and
    a caller that leaves cancels its request on the server.
    """

    def __init__(self, options: SubscribeOptions) -> None:
        check_keywords("subscribe", options, SubscribeOptions)
        self.with_logs = options.get("with_logs", False)
        self.on_enqueue = options.get("on_enqueue")
        self.on_queue_update = options.get("on_queue_update")
        self.client_timeout = options.get("client_timeout")
        self.request_id = ""
        self._request_error: FerryError | None = None

    def feed(self, event: Event) -> dict[str, Any] | None:
        """The output once the event completes the request; raises the request's error."""
        if not self.request_id:
            self.request_id = event.request_id
            if self.on_enqueue is not None:
                self.on_enqueue(event.request_id)
        # Without with_logs, an update that only carries log lines is not news.
        reportable = isinstance(event, Queued) or (isinstance(event, InProgress) and (self.with_logs or not event.logs))
        if self.on_queue_update is not None and reportable:
            self.on_queue_update(event)  # type: ignore[arg-type]
        if isinstance(event, Completed):
            return event.output
        if isinstance(event, (Failed, Cancelled)):
            self._request_error = event.error
            raise event.error
        return None

    def failure(self, error: FerryError) -> FerryError:
        """What to raise for `error`: the request's own, or the call's deadline said as the caller's timeout."""
        if error is not self._request_error and error.code == grpc.StatusCode.DEADLINE_EXCEEDED and self.client_timeout:
            return DeadlineExceeded(
                f"no result within {self.client_timeout}s; the request was cancelled", reason="CLIENT_TIMEOUT"
            )
        return error

    @staticmethod
    def ended() -> FerryError:
        return Unknown("the stream ended without a result")


def subscribe(client: Client, request: inference_pb2.StreamRequest, options: SubscribeOptions) -> dict[str, Any]:
    """Run through Stream, reporting queue updates (and logs when asked); cancels past `client_timeout`."""
    subscription = _Subscription(options)
    try:
        for event in stream_events(client, request, subscription.client_timeout):
            if (output := subscription.feed(event)) is not None:
                return output
    except FerryError as error:
        raise subscription.failure(error) from None
    raise subscription.ended()


async def subscribe_async(
    client: AsyncClient, request: inference_pb2.StreamRequest, options: SubscribeOptions
) -> dict[str, Any]:
    """The asyncio twin of `subscribe`."""
    subscription = _Subscription(options)
    try:
        async for event in stream_events_async(client, request, subscription.client_timeout):
            if (output := subscription.feed(event)) is not None:
                return output
    except FerryError as error:
        raise subscription.failure(error) from None
    raise subscription.ended()
