"""Keeping a claim: renew its lease well before it lapses, and say when it is lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ferry.errors import FerryError
from ferry.inference.queue.base import Claim, RequestQueue

log = logging.getLogger(__name__)


async def keep_lease(queue: RequestQueue, claim: Claim, on_lost: Callable[[], None]) -> None:
    """Renew every third of the lease until cancelled; `on_lost()` once the lease is no longer the claim's
    (the request was cancelled, or it lapsed and another replica took it). While the queue is unreachable,
    keep going and try again next time: the work goes on, and its result is written once the queue is back."""
    while True:
        await asyncio.sleep(queue.lease_seconds / 3)
        try:
            held = await queue.renew(claim.request_id, claim.lease)
        except FerryError as error:
            log.warning("cannot renew the lease of %s: %s", claim.request_id, error)
            continue
        if not held:
            on_lost()
            return
