"""Retrying transient failures with jittered backoff, across a list of equivalent servers.

UNAVAILABLE is always safe to retry (the call never reached a handler, or the
handler lost the whole request); DEADLINE_EXCEEDED only for idempotent calls.
Each attempt moves to the next address, so a dead replica is skipped at once.
Inside a cancelled request's handler no attempt starts (see `request_scope`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from ferry.request_scope import current_scope

Stub = TypeVar("Stub")
T = TypeVar("T")

ATTEMPTS = 10


def retryable(error: grpc.RpcError, idempotent: bool) -> bool:
    code = error.code() if hasattr(error, "code") else None  # sync calls and grpc.aio's AioRpcError alike
    return code == grpc.StatusCode.UNAVAILABLE or (idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED)


def backoff_seconds(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    return random.uniform(0, min(cap, base * 2**attempt))  # full jitter


def call_with_retries(
    stubs: Sequence[Stub], call: Callable[[Stub], T], *, idempotent: bool, attempts: int = ATTEMPTS
) -> T:
    for attempt in range(attempts):
        current_scope().raise_if_cancelled()
        stub = stubs[attempt % len(stubs)]
        try:
            return call(stub)
        except grpc.RpcError as error:
            if attempt == attempts - 1 or not retryable(error, idempotent):
                raise
        if (attempt + 1) % len(stubs) == 0:  # every address failed once: wait before the next round
            time.sleep(backoff_seconds(attempt // len(stubs)))
    raise AssertionError("unreachable")


async def call_with_retries_async(
    stubs: Sequence[Stub], call: Callable[[Stub], Awaitable[T]], *, idempotent: bool, attempts: int = ATTEMPTS
) -> T:
    """The asyncio twin of `call_with_retries`."""
    for attempt in range(attempts):
        current_scope().raise_if_cancelled()
        stub = stubs[attempt % len(stubs)]
        try:
            return await call(stub)
        except grpc.RpcError as error:
            if attempt == attempts - 1 or not retryable(error, idempotent):
                raise
        if (attempt + 1) % len(stubs) == 0:
            await asyncio.sleep(backoff_seconds(attempt // len(stubs)))
    raise AssertionError("unreachable")
