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
from typing import Generic, TypeVar

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


class RetryBudget(Generic[Stub]):
    """One call's attempts: every decision both twins share (which address next, whether to try again, how long
    to wait first), so they cannot drift; the twins only call and sleep."""

    def __init__(self, stubs: Sequence[Stub], idempotent: bool, attempts: int) -> None:
        self.stubs = stubs
        self.idempotent = idempotent
        self.attempts = attempts
        self.attempt = -1  # the number of the attempt under way, from 0
        self.began = time.monotonic()
        self.reached_a_server = False

    def next_stub(self) -> Stub:
        """The next attempt's server, each in turn; no attempt starts inside a cancelled request."""
        current_scope().raise_if_cancelled()
        self.attempt += 1
        return self.stubs[self.attempt % len(self.stubs)]

    def pause_after(self, error: grpc.RpcError) -> float:
        """Seconds to wait before trying again after `error` (none while other addresses are left to try this
        round); raises `error` when it may not be tried again."""
        if not self._may_retry(error):
            raise error
        addresses = len(self.stubs)
        if (self.attempt + 1) % addresses:
            return 0.0
        return backoff_seconds(self.attempt // addresses, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)

    def _may_retry(self, error: grpc.RpcError) -> bool:
        if self.attempt == self.attempts - 1 or not retryable(error, self.idempotent):
            return False
        if not never_connected(error):
            self.reached_a_server = True
            return True
        return self.reached_a_server or time.monotonic() - self.began < CONNECT_BUDGET_SECONDS


def call_with_retries(
    stubs: Sequence[Stub], call: Callable[[Stub], T], *, idempotent: bool, attempts: int = ATTEMPTS
) -> T:
    budget = RetryBudget(stubs, idempotent, attempts)
    while True:
        try:
            return call(budget.next_stub())
        except grpc.RpcError as error:
            time.sleep(budget.pause_after(error))


async def call_with_retries_async(
    stubs: Sequence[Stub], call: Callable[[Stub], Awaitable[T]], *, idempotent: bool, attempts: int = ATTEMPTS
) -> T:
    """The asyncio twin of `call_with_retries`."""
    budget = RetryBudget(stubs, idempotent, attempts)
    while True:
        try:
            return await call(budget.next_stub())
        except grpc.RpcError as error:
            await asyncio.sleep(budget.pause_after(error))
