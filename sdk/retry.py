"""Retrying transient failures with jittered backoff, across a list of equivalent servers.

UNAVAILABLE is always safe to retry (the call never reached a handler, or the
handler lost the whole request); DEADLINE_EXCEEDED only for idempotent calls.
Each attempt moves to the next address, so a dead replica is skipped at once.
Inside a cancelled request's handler no attempt starts (see `request_scope`).

A live server that answers UNAVAILABLE (its storage is down, it is draining)
gets the whole budget of attempts. An address where no connection can be made
at all (refused, unresolvable) gets only `CONNECT_BUDGET_SECONDS`: long enough
for a server that is starting to come up, short enough that a wrong address or
a stopped stack says so in seconds rather than after the full backoff (~15 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from ferry.backoff import backoff_seconds
from ferry.request_scope import current_scope

Stub = TypeVar("Stub")
T = TypeVar("T")

ATTEMPTS = 10
# The wait before each round of attempts after the first: 0.1 s, doubling, at most 5 s (`ferry.backoff`).
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0
# gRPC reconnects after 1 s, then 1.6 s (±20% jitter): 3 s covers three tries to connect.
CONNECT_BUDGET_SECONDS = 3.0
# How grpc (1.85) words UNAVAILABLE when no connection was made: nothing answered, or the name did not resolve.
_NO_CONNECTION = ("failed to connect to all addresses", "errors resolving")


def retryable(error: grpc.RpcError, idempotent: bool) -> bool:
    code = error.code() if hasattr(error, "code") else None  # sync calls and grpc.aio's AioRpcError alike
    return code == grpc.StatusCode.UNAVAILABLE or (idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED)


def never_connected(error: grpc.RpcError) -> bool:
    """UNAVAILABLE because no server could be reached, rather than a server's own answer."""
    if not hasattr(error, "code") or error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return (error.details() or "").startswith(_NO_CONNECTION)


class RetryBudget:
    """What one call may still try: the decisions both twins share, so they cannot drift."""

    def __init__(self, addresses: int, idempotent: bool, attempts: int) -> None:
        self.addresses = addresses
        self.idempotent = idempotent
        self.attempts = attempts
        self.began = time.monotonic()
        self.reached_a_server = False

    def retry(self, attempt: int, error: grpc.RpcError) -> bool:
        """Whether to try again after `error` ended attempt number `attempt` (from 0)."""
        if attempt == self.attempts - 1 or not retryable(error, self.idempotent):
            return False
        if not never_connected(error):
            self.reached_a_server = True
            return True
        return self.reached_a_server or time.monotonic() - self.began < CONNECT_BUDGET_SECONDS

    def pause(self, attempt: int) -> float:
        """Seconds to wait before the next attempt: none while other addresses are left to try this round."""
        if (attempt + 1) % self.addresses:
            return 0.0
        return backoff_seconds(attempt // self.addresses, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)


def call_with_retries(
    stubs: Sequence[Stub], call: Callable[[Stub], T], *, idempotent: bool, attempts: int = ATTEMPTS
) -> T:
    budget = RetryBudget(len(stubs), idempotent, attempts)
    for attempt in range(attempts):
        current_scope().raise_if_cancelled()
        stub = stubs[attempt % len(stubs)]
        try:
            return call(stub)
        except grpc.RpcError as error:
            if not budget.retry(attempt, error):
                raise
        time.sleep(budget.pause(attempt))
    raise AssertionError("unreachable")


async def call_with_retries_async(
    stubs: Sequence[Stub], call: Callable[[Stub], Awaitable[T]], *, idempotent: bool, attempts: int = ATTEMPTS
) -> T:
    """The asyncio twin of `call_with_retries`."""
    budget = RetryBudget(len(stubs), idempotent, attempts)
    for attempt in range(attempts):
        current_scope().raise_if_cancelled()
        stub = stubs[attempt % len(stubs)]
        try:
            return await call(stub)
        except grpc.RpcError as error:
            if not budget.retry(attempt, error):
                raise
        await asyncio.sleep(budget.pause(attempt))
    raise AssertionError("unreachable")
