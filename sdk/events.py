"""What following a request reports, as typed values rather than protobuf messages.

`stream()` yields every one of these; `subscribe(on_queue_update=...)` hands
over the `Queued` and `InProgress` ones. The names are the reference client's
(`fal_client.Queued`, `InProgress`, `Completed`), and log lines are dicts with
its keys, so `for log in update.logs: print(log["message"])` reads the same.

A request ends with exactly one of `Completed` (its output, parsed), `Failed`
(a `FerryError` with the status the request failed with) or `Cancelled` (by
its caller, a disconnect, or the server shutting down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, NamedTuple, TypedDict

import grpc

from ferry.errors import FerryError, Unknown
from ferry.v1 import inference_pb2

__all__ = [
    "Cancelled",
    "Completed",
    "Event",
    "Failed",
    "InProgress",
    "LogLine",
    "PartialOutput",
    "Progress",
    "Queued",
    "RequestEvent",
    "event_from",
    "log_line",
]


class LogLine(TypedDict):
    message: str
    level: str
    timestamp: str  # ISO 8601, UTC


class Progress(NamedTuple):
    current: float
    total: float  # 0 when the handler did not say
    message: str


@dataclass(frozen=True)
class RequestEvent:
    """Every event names its request (to poll or cancel it elsewhere)."""

    request_id: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class Queued(RequestEvent):
    """Waiting for a free slot; `position` requests are ahead (0: next)."""

    position: int


@dataclass(frozen=True)
class InProgress(RequestEvent):
    """Running: the log lines this update brings, and the latest progress when it brings one."""

    logs: list[LogLine] = field(default_factory=list)
    progress: Progress | None = None


@dataclass(frozen=True)
class PartialOutput(RequestEvent):
    """An output the handler reported before its last one."""

    output: dict[str, Any]


@dataclass(frozen=True)
class Completed(RequestEvent):
    output: dict[str, Any]


@dataclass(frozen=True)
class Failed(RequestEvent):
    error: FerryError


@dataclass(frozen=True)
class Cancelled(RequestEvent):
    error: FerryError  # says by whom: the caller, a disconnect, a time limit, the server stopping


Event = Queued | InProgress | PartialOutput | Completed | Failed | Cancelled


def log_line(line: inference_pb2.LogLine) -> LogLine:
    return LogLine(message=line.message, level=line.level, timestamp=line.time.ToDatetime(tzinfo=UTC).isoformat())


def progress_of(message: inference_pb2.Progress) -> Progress:
    return Progress(message.current, message.total, message.message)


def event_from(response: inference_pb2.StreamResponse) -> Event:
    """The typed form of one message of the Stream RPC."""
    kind, request_id = response.WhichOneof("event"), response.request_id
    if kind == "queued":
        return Queued(response.queued.position, request_id=request_id)
    if kind == "in_progress":
        update = response.in_progress
        progress = progress_of(update.progress) if update.HasField("progress") else None
        return InProgress([log_line(line) for line in update.logs], progress, request_id=request_id)
    if kind == "partial_output":
        return PartialOutput(json.loads(response.partial_output.output_json), request_id=request_id)
    if kind == "completed":
        return Completed(json.loads(response.completed.output_json), request_id=request_id)
    if kind == "failed":
        error = FerryError.from_request_error(response.failed.error)
        ending = Cancelled if error.code == grpc.StatusCode.CANCELLED else Failed
        return ending(error, request_id=request_id)
    raise Unknown(f"the server sent an event this SDK does not know ({kind or 'none'})")
