"""The request queue every inference replica shares: the one interface the runner is written against.

A request lives here from `submit` to the end of its result's TTL — not in any
process — so any replica answers for any request, and a replica's death loses
nothing. Backends: `sqlite.py` (the embedded default, a WAL file under the data
dir; processes on one host share it) and `redis.py` (streams with consumer
groups; replicas on any number of machines share it). Both pass one contract
suite (tests/inference/queue/test_contract.py).

Delivery is at least once: a replica holds a request under a lease it renews;
when the lease lapses (the replica died) another replica takes the request
again, up to `max_attempts`, after which it fails UNAVAILABLE. A request that
completed is never handed out again.

The queue knows nothing of protobuf or gRPC: inputs and outputs are JSON
strings, events are opaque bytes with a kind, errors are a status code's name.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# How long a replica's claim on a running request lasts unless renewed; renewed every third of it.
DEFAULT_LEASE_SECONDS = 10.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RESULT_TTL_SECONDS = 24 * 3600
# A request's event log keeps its newest entries only: enough for any progress bar and log pane.
MAX_EVENTS = 1000


class State(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"  # with an output, or with an error (cancelled, failed, timed out)


@dataclass(frozen=True)
class Failure:
    """Why a request failed: a gRPC status code's name ("CANCELLED"), its message and ErrorInfo reason."""

    code: str
    message: str
    reason: str = ""


class Priority(enum.IntEnum):
    NORMAL = 0
    LOW = 1  # taken only while no NORMAL request of its app waits


@dataclass(frozen=True)
class NewRequest:
    app_id: str
    path: str
    input_json: str
    expires_in: int | None = None  # seconds its stored outputs live; None = the store's default
    priority: Priority = Priority.NORMAL
    # Not taken within this many seconds of its submit: it fails DEADLINE_EXCEEDED (START_TIMEOUT), never run.
    start_timeout_seconds: float | None = None
    # Random, fixed at submit: every run of the request derives its outputs' object ids from it (and the request
    # id), so a run after a replica died replaces what the first stored. "": outputs get fresh ids.
    output_salt: str = ""
    # The submitter's W3C traceparent, set while tracing is on: the run's spans join the submit's trace. "": none.
    trace_parent: str = ""


@dataclass(frozen=True)
class Claim:
    """A request a replica took: run it, renew its lease while it runs, then finish it."""

    request_id: str
    request: NewRequest
    attempt: int  # 1 on first delivery; more when a replica died holding it
    lease: str  # this delivery's token: renew and finish name it, so a replica that lost the request cannot finish it
    # Seconds from its submit to this take, by the queue's own clock (a replica's may differ); None when the
    # request was queued by a version that did not record its submit time.
    waited_seconds: float | None = None


@dataclass(frozen=True)
class Status:
    request_id: str
    app_id: str
    state: State
    position: int  # requests taken before it in its app's queue (LOW: every NORMAL one too), while queued; else 0
    attempt: int
    output_json: str = ""
    failure: Failure | None = None


@dataclass(frozen=True)
class Event:
    """One entry of a request's event log: its sequence number (from 1), a kind the runner chose, its bytes."""

    seq: int
    kind: str
    data: bytes


# The kind of the entry `finish` and `cancel` append last: after it a follower reads the final Status.
FINISHED = "finished"


class RequestQueue(Protocol):
    """Every method is safe to call from any replica at any time, concurrently."""

    # How long a claim lasts unless renewed: whoever holds one renews it from this, so the two never disagree.
    lease_seconds: float

    async def submit(self, request: NewRequest, request_id: str | None = None) -> str:
        """Queue a request behind its app's others; its id (`request_id`, else a new one). Submitting an id
        that exists changes nothing."""
        ...

    async def status(self, request_id: str) -> Status:
        """Where it stands; `NotFound` (reason UNKNOWN_REQUEST) once unknown or expired."""
        ...

    async def peek(self, app_id: str) -> tuple[str, NewRequest] | None:
        """The app's next queued request without taking it (a busy replica starts its input downloads early)."""
        ...

    async def take(self, app_id: str, timeout: float) -> Claim | None:
        """The app's next request — one whose replica's lease lapsed, else the oldest queued NORMAL one, else the
        oldest queued LOW one — now IN_PROGRESS under a new lease; None if none came within `timeout` seconds.

        A lapsed request past `max_attempts` is failed UNAVAILABLE (reason MAX_ATTEMPTS) instead of returned; a
        queued one past its start timeout is failed DEADLINE_EXCEEDED (reason START_TIMEOUT).
        """
        ...

    async def renew(self, request_id: str, lease: str) -> bool:
        """Extend the lease; False when it is no longer the request's (finished, cancelled, lapsed and retaken)."""
        ...

    async def finish(self, request_id: str, lease: str, output_json: str = "", failure: Failure | None = None) -> bool:
        """Complete a request under `lease` with its output or its failure; False (and nothing changes) when the
        lease is no longer the request's. The result lives `result_ttl` seconds from now."""
        ...

    async def release(self, request_id: str, lease: str) -> bool:
        """Hand a request back unfinished (its replica is stopping): QUEUED again at the front of its app's queue,
        takeable at once, and the run that was cut short does not count as an attempt; False (and nothing
        changes) when the lease is no longer the request's."""
        ...

    async def cancel(self, request_id: str) -> tuple[State, bool]:
        """The state it was in, and whether this cancelled it. A queued request leaves the queue and completes
        CANCELLED at once; a running one completes CANCELLED and its replica hears of it through `cancellations`
        (within 0.5 s) and stops its handler. A completed one is left as it is."""
        ...

    def cancellations(self) -> AsyncIterator[str]:
        """The id of each running request as it is cancelled, from whichever replica cancelled it: every replica
        hears every one, and stops the handler if it is running it."""
        ...

    async def append(self, request_id: str, kind: str, data: bytes) -> None:
        """Add to the request's event log (its oldest entries drop past MAX_EVENTS)."""
        ...

    async def events(self, request_id: str) -> list[Event]:
        """The event log as it stands (FINISHED last once the request completed); `NotFound` for an unknown id."""
        ...

    def follow(self, request_id: str, after: int = 0) -> AsyncIterator[Event]:
        """The log's entries after `after`, then each new one as it comes, ending with FINISHED once the request
        completes (at once, when it already has)."""
        ...

    async def depth(self, app_id: str) -> int:
        """How many of the app's requests are queued (not running): the autoscaling signal."""
        ...

    async def close(self) -> None:
        """Idempotent."""
        ...


async def final_status(queue: RequestQueue, request_id: str) -> Status:
    """The request's status once it has completed (waiting for it); `NotFound` if it is unknown or expired."""
    async for entry in queue.follow(request_id):
        if entry.kind == FINISHED:
            break
    return await queue.status(request_id)
