"""Calling apps: `run`, `submit` (a handle to poll, stream, wait for or cancel), `subscribe` and `stream`.

Arguments are JSON-compatible dicts; a `pathlib.Path` anywhere in them is a
local file, uploaded first and replaced by its URL. Each piece has an asyncio
twin (`AsyncRequestHandle`, `stream_events_async`, `subscribe_async`) for
`AsyncClient`; what they decide (statuses, errors, when to stop) is shared.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from ferry.errors import FerryError
from ferry.v1 import inference_pb2

if TYPE_CHECKING:
    from ferry.client import AsyncClient, Client

STATE_NAMES = {
    inference_pb2.REQUEST_STATE_QUEUED: "QUEUED",
    inference_pb2.REQUEST_STATE_IN_PROGRESS: "IN_PROGRESS",
    inference_pb2.REQUEST_STATE_COMPLETED: "COMPLETED",
}


@dataclass(frozen=True)
class Status:
    state: str  # QUEUED | IN_PROGRESS | COMPLETED
    position: int
    logs: list[str]
    progress: tuple[float, float, str] | None
    error: FerryError | None


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


def _status(response: inference_pb2.GetStatusResponse) -> Status:
    progress = (response.progress.current, response.progress.total, response.progress.message) if response.HasField("progress") else None
    return Status(
        STATE_NAMES[response.state],
        response.queue_position,
        [line.message for line in response.logs],
        progress,
        FerryError.from_request_error(response.error) if response.HasField("error") else None,
    )


class RequestHandle:
    """A submitted request: poll it, follow its events, wait for its output, or cancel it."""

    def __init__(self, client: Client, request_id: str) -> None:
        self.client = client
        self.request_id = request_id

    def status(self, with_logs: bool = False) -> Status:
        try:
            response = self.client.inference.GetStatus(
                inference_pb2.GetStatusRequest(request_id=self.request_id, with_logs=with_logs)
            )
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        return _status(response)

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the output (raises the request's error)."""
        try:
            response = self.client.inference.GetResult(
                inference_pb2.GetResultRequest(request_id=self.request_id, wait=True), timeout=timeout
            )
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        return json.loads(response.output_json)

    def cancel(self) -> bool:
        """True when the request was still running or queued."""
        try:
            return self.client.inference.Cancel(inference_pb2.CancelRequest(request_id=self.request_id)).cancelled
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None

    def iter_events(self, interval: float = 0.2) -> Iterator[Status]:
        """Statuses as the request moves (polled), ending with COMPLETED."""
        seen: Status | None = None
        while True:
            current = self.status(with_logs=True)
            if current != seen:
                yield current
                seen = current
            if current.state == "COMPLETED":
                return
            time.sleep(interval)


class AsyncRequestHandle:
    """The asyncio twin of `RequestHandle`."""

    def __init__(self, client: AsyncClient, request_id: str) -> None:
        self.client = client
        self.request_id = request_id

    async def status(self, with_logs: bool = False) -> Status:
        try:
            response = await self.client.inference.GetStatus(
                inference_pb2.GetStatusRequest(request_id=self.request_id, with_logs=with_logs)
            )
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        return _status(response)

    async def get(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            response = await self.client.inference.GetResult(
                inference_pb2.GetResultRequest(request_id=self.request_id, wait=True), timeout=timeout
            )
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        return json.loads(response.output_json)

    async def cancel(self) -> bool:
        try:
            return (await self.client.inference.Cancel(inference_pb2.CancelRequest(request_id=self.request_id))).cancelled
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None

    async def iter_events(self, interval: float = 0.2) -> AsyncIterator[Status]:
        seen: Status | None = None
        while True:
            current = await self.status(with_logs=True)
            if current != seen:
                yield current
                seen = current
            if current.state == "COMPLETED":
                return
            await asyncio.sleep(interval)


def stream_events(client: Client, request: inference_pb2.StreamRequest) -> Iterator[inference_pb2.StreamResponse]:
    call = client.inference.Stream(request)
    try:
        yield from call
    except grpc.RpcError as error:
        raise FerryError.from_rpc_error(error) from None
    finally:
        call.cancel()  # stopping early cancels the request server-side


async def stream_events_async(
    client: AsyncClient, request: inference_pb2.StreamRequest
) -> AsyncIterator[inference_pb2.StreamResponse]:
    call = client.inference.Stream(request)
    try:
        async for event in call:
            yield event
    except grpc.RpcError as error:
        raise FerryError.from_rpc_error(error) from None
    finally:
        call.cancel()


class _Subscription:
    """What `subscribe` does with each event, for the sync and async loops alike."""

    def __init__(
        self,
        with_logs: bool,
        on_queue_update: Callable[[inference_pb2.StreamResponse], None] | None,
        client_timeout: float | None,
    ) -> None:
        self.with_logs = with_logs
        self.on_queue_update = on_queue_update
        self.client_timeout = client_timeout
        self.began = time.monotonic()

    def feed(self, event: inference_pb2.StreamResponse) -> dict[str, Any] | None:
        """The output once the event completes the request; raises its error, or past the timeout."""
        kind = event.WhichOneof("event")
        reportable = kind == "queued" or (kind == "in_progress" and (self.with_logs or not event.in_progress.logs))
        if self.on_queue_update is not None and reportable:
            self.on_queue_update(event)
        if kind == "completed":
            return json.loads(event.completed.output_json)  # type: ignore[no-any-return]
        if kind == "failed":
            raise FerryError.from_request_error(event.failed.error)
        if self.client_timeout is not None and time.monotonic() - self.began > self.client_timeout:
            raise FerryError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no result within {self.client_timeout}s; the request was cancelled")
        return None

    @staticmethod
    def ended() -> FerryError:
        return FerryError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")


def subscribe(
    client: Client,
    request: inference_pb2.StreamRequest,
    *,
    with_logs: bool = False,
    on_queue_update: Callable[[inference_pb2.StreamResponse], None] | None = None,
    client_timeout: float | None = None,
) -> dict[str, Any]:
    """Run through Stream, reporting queue updates (and logs when asked); cancels past `client_timeout`."""
    subscription = _Subscription(with_logs, on_queue_update, client_timeout)
    for event in stream_events(client, request):
        if (output := subscription.feed(event)) is not None:
            return output
    raise subscription.ended()


async def subscribe_async(
    client: AsyncClient,
    request: inference_pb2.StreamRequest,
    *,
    with_logs: bool = False,
    on_queue_update: Callable[[inference_pb2.StreamResponse], None] | None = None,
    client_timeout: float | None = None,
) -> dict[str, Any]:
    """The asyncio twin of `subscribe`; `client_timeout` also bounds a request that reports nothing."""
    subscription = _Subscription(with_logs, on_queue_update, client_timeout)

    async def follow() -> dict[str, Any]:
        async for event in stream_events_async(client, request):
            if (output := subscription.feed(event)) is not None:
                return output
        raise subscription.ended()

    try:
        return await asyncio.wait_for(follow(), client_timeout)
    except TimeoutError:
        raise FerryError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no result within {client_timeout}s; the request was cancelled") from None
