"""InferenceService: maps Run, Stream, the queue API and ListEndpoints onto the app runners.

A Run or Stream caller that disconnects cancels its request. Realtime opens a
`RealtimeSession` (inference/realtime.py) from its first message and relays it;
a Realtime caller that disconnects closes its handler.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

import grpc
from grpc_health.v1.health import aio as health_aio

from ferry.errors import FailedPrecondition, NotFound
from ferry.inference.app import load_app
from ferry.inference.health import HealthProbe, health_service_name
from ferry.inference.realtime import RealtimeSession
from ferry.inference.runner import COMPLETED, AppRunner, RequestRecord, request_error
from ferry.inference.schema import input_schema, output_schema
from ferry.inference.services import ServiceClients
from ferry.realtime_connection import SESSION_KEY
from ferry.services.config import StackConfig
from ferry.services.health import NOT_SERVING, SERVING
from ferry.services.lifecycle import expires_in
from ferry.services.runtime import Hosted, Runtime
from ferry.v1 import inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, runners: dict[str, AppRunner]) -> None:
        self.runners = runners

    def _runner(self, app_id: str) -> AppRunner:
        try:
            return self.runners[app_id]
        except KeyError:
            raise NotFound(
                f"no app {app_id!r} (hosted: {', '.join(sorted(self.runners)) or 'none'})", reason="UNKNOWN_APP"
            ) from None

    def _record(self, request_id: str) -> tuple[AppRunner, RequestRecord]:
        for runner in self.runners.values():
            if (record := runner.records.get(request_id)) is not None:
                return runner, record
        raise NotFound(f"no request {request_id!r}", reason="UNKNOWN_REQUEST")

    async def Run(  # noqa: N802
        self,
        request: inference_pb2.RunRequest,
        context: grpc.aio.ServicerContext[inference_pb2.RunRequest, inference_pb2.RunResponse],
    ) -> inference_pb2.RunResponse:
        runner = self._runner(request.app_id)
        record = runner.submit(request.path, request.input_json, expires_in(request.lifecycle, context))
        try:
            await record.finished.wait()
        except asyncio.CancelledError:  # the caller went away: so does its request
            runner.cancel(record)
            raise
        if record.error is not None:
            raise record.error
        return inference_pb2.RunResponse(request_id=record.request_id, output_json=record.output_json)

    async def Stream(  # noqa: N802
        self,
        request: inference_pb2.StreamRequest,
        context: grpc.aio.ServicerContext[inference_pb2.StreamRequest, inference_pb2.StreamResponse],
    ) -> AsyncIterator[inference_pb2.StreamResponse]:
        runner = self._runner(request.app_id)
        record = runner.submit(request.path, request.input_json, expires_in(request.lifecycle, context))
        try:
            async for response in runner.events(record):
                yield response
        finally:
            if record.state != COMPLETED:  # the caller disconnected mid-stream
                runner.cancel(record)

    async def Submit(  # noqa: N802
        self,
        request: inference_pb2.SubmitRequest,
        context: grpc.aio.ServicerContext[inference_pb2.SubmitRequest, inference_pb2.SubmitResponse],
    ) -> inference_pb2.SubmitResponse:
        record = self._runner(request.app_id).submit(
            request.path, request.input_json, expires_in(request.lifecycle, context)
        )
        return inference_pb2.SubmitResponse(request_id=record.request_id)

    async def GetStatus(  # noqa: N802
        self,
        request: inference_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext[inference_pb2.GetStatusRequest, inference_pb2.GetStatusResponse],
    ) -> inference_pb2.GetStatusResponse:
        runner, record = self._record(request.request_id)
        response = inference_pb2.GetStatusResponse(
            request_id=record.request_id, state=record.state, queue_position=runner.position(record)
        )
        if request.with_logs:
            response.logs.extend(record.logs)
        if record.progress is not None:
            response.progress.CopyFrom(record.progress)
        if record.error is not None:
            response.error.CopyFrom(request_error(record.error))
        return response

    async def GetResult(  # noqa: N802
        self,
        request: inference_pb2.GetResultRequest,
        context: grpc.aio.ServicerContext[inference_pb2.GetResultRequest, inference_pb2.GetResultResponse],
    ) -> inference_pb2.GetResultResponse:
        _, record = self._record(request.request_id)
        if record.state != COMPLETED:
            if not request.wait:
                raise FailedPrecondition(
                    "the request has not completed; GetStatus tells where it is", reason="NOT_COMPLETED"
                )
            await record.finished.wait()
        if record.error is not None:
            raise record.error
        return inference_pb2.GetResultResponse(request_id=record.request_id, output_json=record.output_json)

    async def Cancel(  # noqa: N802
        self,
        request: inference_pb2.CancelRequest,
        context: grpc.aio.ServicerContext[inference_pb2.CancelRequest, inference_pb2.CancelResponse],
    ) -> inference_pb2.CancelResponse:
        runner, record = self._record(request.request_id)
        previous, cancelled = runner.cancel(record)
        return inference_pb2.CancelResponse(previous_state=previous, cancelled=cancelled)

    async def Realtime(  # noqa: N802
        self,
        request_iterator: AsyncIterator[inference_pb2.RealtimeRequest],
        context: grpc.aio.ServicerContext[inference_pb2.RealtimeRequest, inference_pb2.RealtimeResponse],
    ) -> AsyncIterator[inference_pb2.RealtimeResponse]:
        session = RealtimeSession.open(
            await anext(request_iterator, None), self._runner, lambda lifecycle: expires_in(lifecycle, context)
        )
        # Headers now, not with the first output: the caller learns at once that the call is open.
        await context.send_initial_metadata(((SESSION_KEY, session.request_id),))
        async with aclosing(session.run(request_iterator)) as responses:
            async for response in responses:
                yield response

    async def ListEndpoints(  # noqa: N802
        self,
        request: inference_pb2.ListEndpointsRequest,
        context: grpc.aio.ServicerContext[inference_pb2.ListEndpointsRequest, inference_pb2.ListEndpointsResponse],
    ) -> inference_pb2.ListEndpointsResponse:
        runners = [self._runner(request.app_id)] if request.app_id else list(self.runners.values())
        apps = []
        for runner in runners:
            endpoints = [
                inference_pb2.EndpointDescription(
                    path=spec.path,
                    input_schema_json=json.dumps(input_schema(spec.input_model)),
                    output_schema_json=json.dumps(output_schema(spec.output_model)),
                    realtime=spec.realtime,
                )
                for spec in runner.spec.endpoints.values()
            ]
            apps.append(
                inference_pb2.AppDescription(
                    app_id=runner.spec.app_id, machine_type=runner.spec.machine_type, endpoints=endpoints
                )
            )
        return inference_pb2.ListEndpointsResponse(apps=apps)


async def host(server: grpc.aio.Server, config: StackConfig, runtime: Runtime) -> Hosted:
    """Load every `--app` and serve InferenceService; once the server listens, run each app's setup.

    Setup waits for the server because it may use the stack itself (weights through
    the downloader); requests that arrive meanwhile queue until their app is ready.
    """
    threads = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 2), thread_name_prefix="ferry-handler")
    services = ServiceClients(runtime.upstream)
    runners: dict[str, AppRunner] = {}
    for spec in config.inference.app:
        runner = AppRunner(load_app(spec), workers=threads, services=services)
        if runner.spec.app_id in runners:
            raise ValueError(f"two apps share the id {runner.spec.app_id!r}")
        runners[runner.spec.app_id] = runner
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(runners), server)
    probes: list[asyncio.Task[None]] = []

    async def start_apps() -> None:
        for runner in runners.values():
            await runner.start()
        probes.extend(
            asyncio.create_task(probe.run()) for probe in await _report_health(runners.values(), runtime.health)
        )

    async def close() -> None:
        for probe in probes:
            probe.cancel()
        for runner in runners.values():
            await runner.stop()
        await services.close()
        threads.shutdown(wait=False, cancel_futures=True)

    return Hosted(close, serving=start_apps)


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
