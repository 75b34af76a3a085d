"""App health: each hosted app has its own `grpc.health.v1` status, fed by its health-check endpoint.

The status is named `ferry.v1.InferenceService/<app_id>` (a Kubernetes gRPC
probe or `grpc_health_probe -service=...` names it). An app is SERVING once its
`setup()` has run. An app that declares `@endpoint(path, health_check=HealthCheck(...))`
is then probed the way Docker's HEALTHCHECK does it: right away and every
`interval_seconds`, each call bounded by `timeout_seconds`; a call that raises
or overruns is a failure; `failure_threshold` failures in a row flip the app to
NOT_SERVING, the next success flips it back. Failures inside
`start_period_seconds` (a model still warming up) do not count.

Probes bypass the request queue: a busy app is not an unhealthy one. A sync
probe that overruns keeps its thread; until it returns, each due probe counts
as another failure instead of stacking a second call on a stuck app.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from ferry.client import INFERENCE_SERVICE
from ferry.inference.context import logging_context
from ferry.inference.runner import AppRunner

log = logging.getLogger(__name__)

SERVICE_PREFIX = f"{INFERENCE_SERVICE}/"

# Called with True (SERVING) or False (NOT_SERVING) on every change.
Report = Callable[[bool], Awaitable[None]]


def health_service_name(app_id: str) -> str:
    return SERVICE_PREFIX + app_id


class HealthProbe:
    def __init__(self, runner: AppRunner, report: Report) -> None:
        endpoint = runner.spec.health_endpoint
        if endpoint is None or endpoint.health_check is None:
            raise ValueError(f"app {runner.spec.app_id!r} declares no health-check endpoint")
        self.runner = runner
        self.endpoint = endpoint
        self.check = endpoint.health_check
        self.report = report
        self.failures = 0
        self.healthy = True
        self._pending: asyncio.Task[object] | None = None

    async def run(self) -> None:
        """Probe until cancelled."""
        started = time.monotonic()
        try:
            while True:
                if await self.probe_once():
                    self.failures = 0
                    await self._set(True)
                elif time.monotonic() - started >= self.check.start_period_seconds:
                    self.failures += 1
                    if self.failures >= self.check.failure_threshold:
                        await self._set(False)
                await asyncio.sleep(self.check.interval_seconds)
        finally:
            if self._pending is not None:
                self._pending.cancel()

    async def probe_once(self) -> bool:
        """One call of the health endpoint: True when it returned in time."""
        if self._pending is not None and not self._pending.done():
            self._failed("stuck")
            return False  # the last probe is still stuck in the app
        probe_id = f"health-{uuid.uuid4().hex[:8]}"
        context = logging_context(probe_id, f"{self.runner.spec.app_id} {probe_id}", log)
        self._pending = task = asyncio.create_task(
            self.runner.call_handler(self.endpoint, self.endpoint.input_model(), context)
        )
        done, _ = await asyncio.wait({task}, timeout=self.check.timeout_seconds)
        if not done:
            task.cancel()  # an async probe stops; a sync one is flagged and keeps its thread until it returns
            log.warning("%s health check overran %g s", self.runner.spec.app_id, self.check.timeout_seconds)
            self._failed("timeout")
            return False
        if (error := task.exception()) is not None:
            log.warning("%s health check failed: %s: %s", self.runner.spec.app_id, type(error).__name__, error)
            self._failed("error")
            return False
        return True

    def _failed(self, cause: str) -> None:
        """Counted whether or not it is inside the start period: a warming model's failures show too."""
        self.runner.metrics.health_probe_failures.labels(self.runner.spec.app_id, cause).inc()

    async def _set(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.warning("app %s is now %s", self.runner.spec.app_id, "SERVING" if healthy else "NOT_SERVING")
        self.healthy = healthy
        await self.report(healthy)
