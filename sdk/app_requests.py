"""Calling apps: `run`, `submit` (a handle to poll, stream, wait for or cancel), `subscribe` and `stream`.

Arguments are JSON-compatible dicts; a `pathlib.Path` anywhere in them is a
local file, uploaded first and replaced by its URL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from ferry.errors import FerryError
from ferry.v1 import inference_pb2

if TYPE_CHECKING:
    from ferry.client import Client

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


def _error(error: inference_pb2.RequestError) -> FerryError:
    return FerryError(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == error.code)), error.message, error.reason)


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
        progress = (response.progress.current, response.progress.total, response.progress.message) if response.HasField("progress") else None
        return Status(
            STATE_NAMES[response.state],
            response.queue_position,
            [line.message for line in response.logs],
            progress,
            _error(response.error) if response.HasField("error") else None,
        )

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


def stream_events(client: Client, request: inference_pb2.StreamRequest) -> Iterator[inference_pb2.StreamResponse]:
    call = client.inference.Stream(request)
    try:
        yield from call
    except grpc.RpcError as error:
        raise FerryError.from_rpc_error(error) from None
    finally:
        call.cancel()  # stopping early cancels the request server-side


def subscribe(
    client: Client,
    request: inference_pb2.StreamRequest,
    *,
    with_logs: bool = False,
    on_queue_update: Callable[[inference_pb2.StreamResponse], None] | None = None,
    client_timeout: float | None = None,
) -> dict[str, Any]:
    """Run through Stream, reporting queue updates (and logs when asked); cancels past `client_timeout`."""
    began = time.monotonic()
    for event in stream_events(client, request):
        kind = event.WhichOneof("event")
        if on_queue_update is not None and (kind in ("queued", "in_progress") and (with_logs or kind == "queued" or not event.in_progress.logs)):
            on_queue_update(event)
        if kind == "completed":
            return json.loads(event.completed.output_json)
        if kind == "failed":
            raise _error(event.failed.error)
        if client_timeout is not None and time.monotonic() - began > client_timeout:
            raise FerryError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no result within {client_timeout}s; the request was cancelled")
    raise FerryError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")
