"""InferenceService: maps Run, Stream, the queue API and ListEndpoints onto the shared queue and the app runners.

Requests go through `Requests` (inference/requests.py), which reads the queue, so
any replica answers for any request. A Run or Stream caller that disconnects
cancels its request. Realtime opens a `RealtimeSession` (inference/realtime.py)
from its first message and relays it on this replica; a Realtime caller that
disconnects closes its handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1.health import aio as health_aio

from ferry.client import INFERENCE_SERVICE
from ferry.errors import FerryError, InvalidArgument
from ferry.inference.app import load_app
from ferry.inference.health import HealthProbe, health_service_name
from ferry.inference.queue.base import NewRequest, Priority, RequestQueue, State
from ferry.inference.queue.opening import open_queue
from ferry.inference.realtime import RealtimeSession, request_error
from ferry.inference.request_events import LogLine, PartialOutput, Progress, Started
from ferry.inference.requests import Finished, Queued, Requests, StreamEvent, output_of
from ferry.inference.runner import AppRunner
from ferry.inference.schema import input_schema, output_schema
from ferry.inference.services import ServiceClients
from ferry.inference.webhooks import WebhookSender
from ferry.realtime_connection import SESSION_KEY
from ferry.services.config import StackConfig
from ferry.services.downloader.guard import NetworkGuard
from ferry.services.health import NOT_SERVING, SERVING
from ferry.services.lifecycle import expires_in
from ferry.services.metrics import StackMetrics
from ferry.services.rpc_context import RpcContext
from ferry.services.runtime import Hosted, Runtime
from ferry.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

# How often a replica checks that the queue answers (health flips within about this long of an outage).
QUEUE_PROBE_SECONDS = 1.0

WEBHOOK_STATES = {
    "pending": inference_pb2.WEBHOOK_STATE_PENDING,
    "delivered": inference_pb2.WEBHOOK_STATE_DELIVERED,
    "failed": inference_pb2.WEBHOOK_STATE_FAILED,
}
# A day: a request that may wait longer than that to start has no need of a start timeout.
MAX_START_TIMEOUT = 86400.0
STATES = {
    State.QUEUED: inference_pb2.REQUEST_STATE_QUEUED,
    State.IN_PROGRESS: inference_pb2.REQUEST_STATE_IN_PROGRESS,
    State.COMPLETED: inference_pb2.REQUEST_STATE_COMPLETED,
}


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, requests: Requests) -> None:
        self.requests = requests

    async def Run(self, request: inference_pb2.RunRequest, context: RpcContext) -> inference_pb2.RunResponse:
        lifetime = expires_in(request.lifecycle, context)
        request_id = await self.requests.submit(NewRequest(request.app_id, request.path, request.input_json, lifetime))
        try:
            status = await self.requests.outcome(request_id)
        except asyncio.CancelledError:  # the caller went away: so does its request
            await asyncio.shield(self.requests.cancel(request_id))
            raise
        return inference_pb2.RunResponse(request_id=request_id, output_json=output_of(status))

    async def Stream(
        self, request: inference_pb2.StreamRequest, context: RpcContext
    ) -> AsyncIterator[inference_pb2.StreamResponse]:
        following = bool(request.request_id)
        if following:
            request_id = request.request_id
        else:
            lifetime = expires_in(request.lifecycle, context)
            submitted = NewRequest(request.app_id, request.path, request.input_json, lifetime)
            request_id = await self.requests.submit(submitted)
        ended = False
        try:
            async for event in self.requests.events(request_id):
                ended = isinstance(event, Finished)
                yield stream_response(request_id, event)
        finally:
            if not ended and not following:  # the caller of its own request disconnected mid-stream
                await asyncio.shield(self.requests.cancel(request_id))

    async def Submit(self, request: inference_pb2.SubmitRequest, context: RpcContext) -> inference_pb2.SubmitResponse:
        lifetime = expires_in(request.lifecycle, context)
        queued = NewRequest(
            request.app_id,
            request.path,
            request.input_json,
            lifetime,
            Priority.LOW if request.priority == inference_pb2.REQUEST_PRIORITY_LOW else Priority.NORMAL,
            request.start_timeout_seconds or None,
        )
        if queued.start_timeout_seconds is not None and not 0 < queued.start_timeout_seconds <= MAX_START_TIMEOUT:
            raise InvalidArgument(
                f"start_timeout_seconds must be between 0 and {MAX_START_TIMEOUT:g}", reason="BAD_START_TIMEOUT"
            )
        request_id = await self.requests.submit(
            queued, webhook_url=request.webhook_url, idempotency_key=request.idempotency_key
        )
        return inference_pb2.SubmitResponse(request_id=request_id)

    async def GetStatus(
        self, request: inference_pb2.GetStatusRequest, context: RpcContext
    ) -> inference_pb2.GetStatusResponse:
        report = await self.requests.report(request.request_id)
        status = report.status
        response = inference_pb2.GetStatusResponse(
            request_id=status.request_id,
            state=STATES[status.state],
            queue_position=status.position,
            attempt=status.attempt,
        )
        if request.with_logs:
            response.logs.extend(_log_line(line) for line in report.logs)
        if report.progress is not None:
            response.progress.CopyFrom(_progress(report.progress))
        if status.failure is not None:
            response.error.CopyFrom(request_error(status.failure))
        if (webhook := report.webhook) is not None:
            response.webhook.CopyFrom(
                inference_pb2.WebhookDelivery(
                    state=WEBHOOK_STATES[webhook.state], attempts=webhook.attempts, last_error=webhook.last_error
                )
            )
        return response

    async def GetResult(
        self, request: inference_pb2.GetResultRequest, context: RpcContext
    ) -> inference_pb2.GetResultResponse:
        output_json = await self.requests.result(request.request_id, request.wait)
        return inference_pb2.GetResultResponse(request_id=request.request_id, output_json=output_json)

    async def Cancel(self, request: inference_pb2.CancelRequest, context: RpcContext) -> inference_pb2.CancelResponse:
        previous, cancelled = await self.requests.cancel(request.request_id)
        return inference_pb2.CancelResponse(previous_state=STATES[previous], cancelled=cancelled)

    async def Realtime(
        self, request_iterator: AsyncIterator[inference_pb2.RealtimeRequest], context: RpcContext
    ) -> AsyncIterator[inference_pb2.RealtimeResponse]:
        session = RealtimeSession.open(
            await anext(request_iterator, None),
            self.requests.runner,
            lambda lifecycle: expires_in(lifecycle, context),
        )
        async with session.running(request_iterator):
            # Headers once the handler runs, not with its first output: the caller learns at once that the
            # call is open, and one that goes at once still finds a handler to close.
            await context.send_initial_metadata(((SESSION_KEY, session.request_id),))
            while (response := await session.next_response()) is not None:
                yield response

    async def ListEndpoints(
        self, request: inference_pb2.ListEndpointsRequest, context: RpcContext
    ) -> inference_pb2.ListEndpointsResponse:
        runners = [self.requests.runner(request.app_id)] if request.app_id else list(self.requests.runners.values())
        apps = []
        for runner in runners:
            endpoints = [
                inference_pb2.EndpointDescription(
                    path=spec.path,
                    input_schema_json=json.dumps(input_schema(spec.input_model)),
                    output_schema_json=json.dumps(output_schema(spec.output_model)),
                    realtime=spec.realtime,
                    description=spec.description,
                )
                for spec in runner.spec.endpoints.values()
            ]
            apps.append(
                inference_pb2.AppDescription(
                    app_id=runner.spec.app_id, machine_type=runner.spec.machine_type, endpoints=endpoints
                )
            )
        return inference_pb2.ListEndpointsResponse(apps=apps)


async def _read_queue_metrics(queue: RequestQueue, runners: dict[str, AppRunner], metrics: StackMetrics) -> None:
    """Each app's queue depth (the queue's own count: every replica reports the same) and this replica's slots."""
    for app_id, runner in runners.items():
        try:
            metrics.queue_depth.labels(app_id).set(await queue.depth(app_id))
        except FerryError:  # the queue is unreachable: the depth is unknown (NaN), not zero
            metrics.queue_depth.labels(app_id).set(float("nan"))
        metrics.slots_busy.labels(app_id).set(runner.busy)
        metrics.slots_total.labels(app_id).set(runner.spec.max_concurrency)


async def host(server: grpc.aio.Server, config: StackConfig, runtime: Runtime) -> Hosted:
    """Load every `--app` and serve InferenceService; once the server listens, run each app's setup.

    Setup waits for the server because it may use the stack itself (weights through
    the downloader); requests that arrive meanwhile queue until their app is ready.
    """
    threads = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 2), thread_name_prefix="ferry-handler")
    services = ServiceClients(runtime.upstream)
    try:
        queue = await open_queue(config.inference, config.server.data_dir)
    except FerryError as error:
        from ferry.services.launch import CannotStart

        raise CannotStart(f"cannot open the request queue: {error.message}") from None
    runners: dict[str, AppRunner] = {}
    for spec in config.inference.app:
        runner = AppRunner(load_app(spec), queue=queue, workers=threads, services=services, metrics=runtime.metrics)
        if runner.spec.app_id in runners:
            raise ValueError(f"two apps share the id {runner.spec.app_id!r}")
        runners[runner.spec.app_id] = runner
    downloads = config.downloader
    guard = NetworkGuard(downloads.allow_private_networks, downloads.allowed)  # the same guard as downloads
    secret, first_retry = config.inference.webhook_secret, config.inference.webhook_retry_seconds
    try:
        webhooks = WebhookSender(queue, secret, guard, first_retry_seconds=first_retry, metrics=runtime.metrics)
    except ValueError as error:
        from ferry.services.launch import CannotStart

        raise CannotStart(str(error)) from None
    requests = Requests(queue, runners, webhooks)
    runtime.metrics.refresh_with(lambda: _read_queue_metrics(queue, runners, runtime.metrics))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(requests), server)
    probes: list[asyncio.Task[None]] = []

    async def start_apps() -> None:
        await webhooks.start()
        for runner in runners.values():
            await runner.start()
        probes.extend(
            asyncio.create_task(probe.run()) for probe in await _report_health(runners.values(), runtime.health)
        )
        probes.append(asyncio.create_task(_watch_queue(queue, runners, runtime.health)))

    async def close() -> None:
        for probe in probes:
            probe.cancel()
        # SIGTERM (a rolling update): running handlers get the drain time to finish before they are stopped.
        await asyncio.gather(*(runner.stop(config.server.drain_seconds) for runner in runners.values()))
        await webhooks.stop()
        await queue.close()
        await services.close()
        threads.shutdown(wait=False, cancel_futures=True)

    return Hosted(close, serving=start_apps)


async def _watch_queue(
    queue: RequestQueue, runners: Mapping[str, AppRunner], health: health_aio.HealthServicer
) -> None:
    """InferenceService is NOT_SERVING while the queue is unreachable (a Redis outage), SERVING once it answers."""
    reachable = True
    probe_app = next(iter(runners), "")
    while True:
        await asyncio.sleep(QUEUE_PROBE_SECONDS)
        try:
            await queue.depth(probe_app)
            answered = True
        except FerryError as error:
            answered = False
            if reachable:
                log.warning("the request queue is unreachable: %s", error)
        if answered != reachable:
            reachable = answered
            await health.set(INFERENCE_SERVICE, SERVING if reachable else NOT_SERVING)


async def _report_health(runners: Iterable[AppRunner], health: health_aio.HealthServicer) -> list[HealthProbe]:
    """Each app SERVING under its own health name; the probes that keep that true for apps that declare one."""
    probes = []
    for runner in runners:
        name = health_service_name(runner.spec.app_id)
        await health.set(name, SERVING)
        if runner.spec.health_endpoint is not None:

            async def report(healthy: bool, name: str = name) -> None:
                await health.set(name, SERVING if healthy else NOT_SERVING)

            probes.append(HealthProbe(runner, report))
    return probes


def stream_response(request_id: str, event: StreamEvent) -> inference_pb2.StreamResponse:
    response = inference_pb2.StreamResponse(request_id=request_id)
    if isinstance(event, Queued):
        response.queued.position = event.position
    elif isinstance(event, Started):
        response.in_progress.SetInParent()
    elif isinstance(event, Progress):
        response.in_progress.progress.CopyFrom(_progress(event))
    elif isinstance(event, LogLine):
        response.in_progress.logs.append(_log_line(event))
    elif isinstance(event, PartialOutput):
        response.partial_output.output_json = event.output_json
    elif event.status.failure is None:
        response.completed.output_json = event.status.output_json
    else:
        response.failed.error.CopyFrom(request_error(event.status.failure))
    return response


def _progress(progress: Progress) -> inference_pb2.Progress:
    return inference_pb2.Progress(current=progress.current, total=progress.total, message=progress.message)


def _log_line(line: LogLine) -> inference_pb2.LogLine:
    message = inference_pb2.LogLine(level=line.level, message=line.message)
    message.time.FromNanoseconds(line.time_ns)
    return message
