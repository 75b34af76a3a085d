"""Webhooks: a request's result POSTed to the URL its caller gave, signed, retried, by whichever replica is free.

A delivery is itself a request in the shared queue, under the reserved app
WEBHOOKS_APP and the id `webhook-<request id>`, queued when the request is
(before it, so no crash between the two loses a delivery). A replica's sender
takes it, waits for the request's outcome, and POSTs it; the delivery's lease
is renewed meanwhile, so a replica that dies hands it to another. Each attempt
is an entry of the delivery's event log, which GetStatus reads.

Signed per the Standard Webhooks scheme (standardwebhooks.com): headers
`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256
of "id.timestamp.body">`, keyed by `--webhook-secret` (`whsec_<base64>`).
Retried with equal-jitter backoff from `--webhook-retry-seconds` (5 s), capped
at 30 min, for up to WEBHOOK_ATTEMPTS attempts or two hours. The URL passes the
downloads' network guard when submitted and when connected (no redirects are
followed). Senders run beside the app slots: a receiver that is down holds a
sender, never a request, a cancel or a slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from ferry.backoff import backoff_seconds
from ferry.errors import FailedPrecondition, FerryError, InvalidArgument, NotFound, PermissionDenied
from ferry.inference.queue.base import Claim, Failure, NewRequest, RequestQueue, State, Status, final_status
from ferry.inference.queue.leases import keep_lease
from ferry.services.downloader.guard import NetworkGuard
from ferry.services.metrics import StackMetrics

log = logging.getLogger(__name__)

# Not a valid app id (app ids are kebab-case), so no app can take these.
WEBHOOKS_APP = "ferry.webhooks"
WEBHOOK_ATTEMPTS = 12
GIVE_UP_SECONDS = 2 * 3600.0
MAX_URL_CHARS = 2048
SENDERS = 8
ATTEMPT = "attempt"


def delivery_id(request_id: str) -> str:
    return f"webhook-{request_id}"


def secret_key(secret: str) -> bytes:
    """The HMAC key, read as Standard Webhooks libraries read it: base64, after an optional `whsec_` prefix
    (padding optional), so a receiver verifies with the very string the server was given."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:
        raise ValueError("--webhook-secret must be whsec_BASE64 (or base64), as Standard Webhooks expects") from None
    if not key:
        raise ValueError("--webhook-secret is empty")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(status: Status) -> bytes:
    """What the receiver gets: the request's id, OK or ERROR, and its output or its error."""
    body: dict[str, object] = {"request_id": status.request_id, "app_id": status.app_id}
    if status.failure is None:
        body |= {"status": "OK", "payload": json.loads(status.output_json), "error": None}
    else:
        failure = status.failure
        error = {"code": failure.code, "message": failure.message, "reason": failure.reason or failure.code}
        body |= {"status": "ERROR", "payload": None, "error": error}
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Delivery:
    """Where a request's webhook stands, as GetStatus reports it."""

    state: str  # "pending", "delivered" or "failed"
    attempts: int
    last_error: str


async def delivery_of(queue: RequestQueue, request_id: str) -> Delivery | None:
    """The request's webhook delivery; None when it was submitted without one."""
    try:
        status = await queue.status(delivery_id(request_id))
        entries = await queue.events(delivery_id(request_id))
    except NotFound:
        return None
    attempts = [json.loads(entry.data) for entry in entries if entry.kind == ATTEMPT]
    last_error = next((a["error"] for a in reversed(attempts) if a["error"]), "")
    if status.state != State.COMPLETED:
        return Delivery("pending", len(attempts), last_error)
    if status.failure is None:
        return Delivery("delivered", len(attempts), last_error)
    return Delivery("failed", len(attempts), last_error or status.failure.message)


class WebhookSender:
    def __init__(
        self,
        queue: RequestQueue,
        secret: str | None,
        guard: NetworkGuard,
        *,
        first_retry_seconds: float = 5.0,
        max_retry_seconds: float = 1800.0,
        metrics: StackMetrics | None = None,
    ) -> None:
        self.queue = queue
        self.metrics = metrics or StackMetrics()
        self._key = secret_key(secret) if secret else None
        self.guard = guard
        self.first_retry_seconds = first_retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def check(self, url: str) -> None:
        """Refuse, at submit, a webhook this server could never deliver."""
        if self._key is None:
            raise FailedPrecondition(
                "this server sends no webhooks: start it with --webhook-secret", reason="NO_WEBHOOK_SECRET"
            )
        if len(url) > MAX_URL_CHARS:
            raise InvalidArgument(f"webhook_url is longer than {MAX_URL_CHARS} characters", reason="MALFORMED_URL")
        parsed = self.guard.check_url(url)
        if parsed.scheme not in ("http", "https"):
            raise PermissionDenied("a webhook_url is http or https", reason="SCHEME_REFUSED")

    async def submit(self, request_id: str, url: str) -> None:
        """Queue the delivery of `request_id`'s result (before the request itself is queued)."""
        target = json.dumps({"request_id": request_id, "url": url})
        await self.queue.submit(NewRequest(WEBHOOKS_APP, "/", target), delivery_id(request_id))

    async def start(self) -> None:
        if self._key is None:
            return
        connector = aiohttp.TCPConnector(resolver=self.guard.resolver())
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        self._tasks = [asyncio.create_task(self._work()) for _ in range(SENDERS)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while True:
            try:
                claim = await self.queue.take(WEBHOOKS_APP, 1.0)
            except FerryError as error:
                log.warning("webhooks: cannot take a delivery: %s", error)
                await asyncio.sleep(1.0)
                continue
            if claim is None:
                continue
            try:
                await self._deliver(claim)
            except FerryError as error:  # the queue went away mid-delivery: its lease lapses and it is taken again
                log.warning("webhooks: delivery %s interrupted: %s", claim.request_id, error)

    async def _deliver(self, claim: Claim) -> None:
        lost = asyncio.Event()
        lease = asyncio.create_task(keep_lease(self.queue, claim, lost.set))
        try:
            failure = await _until(lost, self._attempts(claim))
            if not lost.is_set():
                await self.queue.finish(claim.request_id, claim.lease, "{}", failure)
        finally:
            lease.cancel()

    async def _attempts(self, claim: Claim) -> Failure | None:
        """Deliver until the receiver takes it or attempts run out; the failure, or None once delivered."""
        target = json.loads(claim.request.input_json)
        request_id, url = target["request_id"], target["url"]
        outcome = await _outcome(self.queue, request_id)
        if outcome is None:
            self.metrics.webhook_deliveries.labels("request_gone").inc()
            return Failure("NOT_FOUND", f"request {request_id} no longer exists", "UNKNOWN_REQUEST")
        body = payload(outcome)
        started = time.monotonic()
        done = len([e for e in await self.queue.events(claim.request_id) if e.kind == ATTEMPT])  # before a crash
        for attempt in range(done, WEBHOOK_ATTEMPTS):
            if attempt:
                delay = backoff_seconds(attempt - 1, self.first_retry_seconds, self.max_retry_seconds)
                await asyncio.sleep(delay)
            error = await self._post(url, claim.request_id, body)
            record = json.dumps({"attempt": attempt + 1, "error": error}).encode()
            with contextlib.suppress(FerryError):
                await self.queue.append(claim.request_id, ATTEMPT, record)
            if not error:
                self.metrics.webhook_deliveries.labels("delivered").inc()
                return None
            if time.monotonic() - started > GIVE_UP_SECONDS:
                break
        self.metrics.webhook_deliveries.labels("failed").inc()
        return Failure("UNAVAILABLE", f"webhook not delivered after {WEBHOOK_ATTEMPTS} attempts", "WEBHOOK_FAILED")

    async def _post(self, url: str, message_id: str, body: bytes) -> str:
        """ "" once the receiver answered 2xx; else what went wrong, in a few words."""
        assert self._session is not None and self._key is not None
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._key, message_id, timestamp, body),
        }
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return ""
                self.metrics.webhook_failed_attempts.labels("status").inc()
                return f"the receiver answered HTTP {response.status}"
        except FerryError as error:  # the network guard refused the address the name resolved to
            self.metrics.webhook_failed_attempts.labels("refused").inc()
            return error.message
        except (aiohttp.ClientError, TimeoutError) as error:
            self.metrics.webhook_failed_attempts.labels("unreachable").inc()
            return f"{type(error).__name__}: {error}"[:300]


async def _outcome(queue: RequestQueue, request_id: str) -> Status | None:
    """The request's final status once it has one; None if it is unknown (never queued, or expired)."""
    try:
        return await final_status(queue, request_id)
    except NotFound:
        return None


async def _until(lost: asyncio.Event, work: Coroutine[Any, Any, Failure | None]) -> Failure | None:
    """`work`'s result, unless the lease is lost first (then None, and the work is stopped)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.create_task(lost.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    result: Failure | None = task.result()
    return result
