"""What a test stack says about itself on /metrics, and a client that leaves mid-call.

Tests that need to know a request has started, or ended cancelled, read the server's own counts
rather than racing a follow-up call against time: a module's stack may still be finishing what
earlier tests started.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx


def metric(http: httpx.Client, sample: str) -> float:
    """One sample's value from the server's /metrics (0 when it has none yet)."""
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(sample + " ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def cancelled_slow_runs(http: httpx.Client) -> float:
    return metric(http, 'ferry_requests_total{app="sample",endpoint="/slow",outcome="CANCELLED"}')


def slow_runs_started(http: httpx.Client) -> float:
    """Handlers running now: the sample app runs one at a time, so 1 once the /slow one has started."""
    return metric(http, 'ferry_app_slots_busy{app="sample"}')


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


async def send_and_leave(
    url: str, request: bytes, under_way: Callable[[], bool], tls: ssl.SSLContext | None = None
) -> None:
    """Send `request` raw to `url`'s host; close the connection once `under_way()` says the call reached the server."""
    address = urlsplit(url)
    _, writer = await asyncio.open_connection(address.hostname, address.port, ssl=tls)
    writer.write(request)
    await writer.drain()
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(under_way) and time.monotonic() < deadline:  # noqa: ASYNC110 (polls another process)
        await asyncio.sleep(0.05)
    writer.close()


def leave_a_slow_run(http: httpx.Client, url: str, request: bytes, tls: ssl.SSLContext | None = None) -> float:
    """Send `request` (a /slow run), leave once it runs; how many /slow runs ended cancelled meanwhile."""
    wait_until(lambda: not slow_runs_started(http))  # an earlier test's request still stopping: this one must run
    before = cancelled_slow_runs(http)
    asyncio.run(send_and_leave(url, request, lambda: slow_runs_started(http) > 0, tls))
    wait_until(lambda: cancelled_slow_runs(http) > before)
    return cancelled_slow_runs(http) - before
