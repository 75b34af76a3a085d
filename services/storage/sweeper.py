"""The background task that deletes expired objects and idle multipart uploads.

It sweeps once at start (objects may have expired while the server was down),
then every interval. A failed sweep is logged and the next one tries again:
the CDN already refuses expired objects, so a late sweep costs only disk.
"""

from __future__ import annotations

import asyncio
import logging

from ferry.services.storage.base import Clock, Storage, utc_now

log = logging.getLogger(__name__)


async def run_sweeper(storage: Storage, interval_seconds: float, clock: Clock = utc_now) -> None:
    """Sweep `storage` every `interval_seconds` until cancelled; what has expired by `clock` goes."""
    while True:
        try:
            removed = await storage.sweep(clock())
            if removed:
                log.info("storage sweep removed %d expired objects and idle uploads from %s", removed, storage.name)
        except Exception:
            log.exception("storage sweep of %s failed; retrying in %.0fs", storage.name, interval_seconds)
        await asyncio.sleep(interval_seconds)
