"""The reference platform's queue and run APIs over HTTP, each route one InferenceService call.

    POST /queue/{owner}/{app}[/{path}]                        Submit      → {request_id, status_url, …}
    GET  /queue/{owner}/{app}/requests/{id}/status[?logs=1]   GetStatus   → {status: IN_QUEUE | IN_PROGRESS | COMPLETED}
    GET  /queue/{owner}/{app}/requests/{id}/status/stream     Stream      → the same, as server-sent events
    GET  /queue/{owner}/{app}/requests/{id}                   GetResult   → the output JSON
    PUT  /queue/{owner}/{app}/requests/{id}/cancel            Cancel
    POST /run/{owner}/{app}[/{path}]                          Run         → the output JSON

The reference client turns an app id `owner/app` into `https://{host}/owner/app/…`,
with its queue host and run host set apart (`FAL_QUEUE_RUN_HOST`, `FAL_RUN_HOST`);
both may carry a path, so `HOST:PORT/queue` and `HOST:PORT/run` share the HTTP
port. Ferry has no owners: the first segment is required and ignored, and the
second is the Ferry app id (`ferry/upscaler` is the app `upscaler`). A request
id names one request whatever app its URL says.

Submit reads the reference's options: `?fal_webhook=URL`, `X-Fal-Queue-Priority:
normal|low`, `X-Fal-Request-Timeout: SECONDS` (the start timeout), and
`X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}`.
Credentials (`Authorization: Key T` or `Bearer T`) go to the gRPC server with
each call, so its token rules apply unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ferry.errors import FerryError, InvalidArgument, Unavailable
from ferry.services.gateway.channel import (
    StackChannel,
    caller_metadata,
    cancelled_when_client_leaves,
    reply_unless_client_leaves,
)
from ferry.services.gateway.http_errors import error_response, json_error
from ferry.services.lifecycle import preference_seconds
from ferry.services.storage.cdn import MAX_BODY_BYTES
from ferry.v1 import common_pb2, inference_pb2, inference_pb2_grpc

QUEUE_PREFIX = "/queue"
RUN_PREFIX = "/run"
REQUEST_ID_HEADER = "X-Fal-Request-Id"
PRIORITY_HEADER = "X-Fal-Queue-Priority"
START_TIMEOUT_HEADER = "X-Fal-Request-Timeout"
LIFECYCLE_HEADER = "X-Fal-Object-Lifecycle-Preference"
WEBHOOK_PARAMETER = "fal_webhook"

_PRIORITIES = {"normal": inference_pb2.REQUEST_PRIORITY_NORMAL, "low": inference_pb2.REQUEST_PRIORITY_LOW}
_STATUS_NAMES = {
    inference_pb2.REQUEST_STATE_QUEUED: "IN_QUEUE",
    inference_pb2.REQUEST_STATE_IN_PROGRESS: "IN_PROGRESS",
    inference_pb2.REQUEST_STATE_COMPLETED: "COMPLETED",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def queue_routes(channel: StackChannel) -> list[web.RouteDef]:
    api = QueueApi(channel)
    app_path = "/{owner}/{app}"
    request_path = f"{QUEUE_PREFIX}{app_path}/requests/{{request_id}}"
    submit, run = _answers_errors(api.submit), _answers_errors(api.run)
    return [
        web.post(f"{QUEUE_PREFIX}{app_path}", submit),
        web.post(f"{QUEUE_PREFIX}{app_path}/{{path:.+}}", submit),
        web.get(f"{request_path}/status", _answers_errors(api.status)),
        web.get(f"{request_path}/status/stream", _answers_errors(api.status_stream)),
        web.get(request_path, _answers_errors(api.result)),
        web.put(f"{request_path}/cancel", _answers_errors(api.cancel)),
        web.post(f"{RUN_PREFIX}{app_path}", run),
        web.post(f"{RUN_PREFIX}{app_path}/{{path:.+}}", run),
    ]


def _answers_errors(handler: Handler) -> Handler:
    """A route whose failed calls (and refused requests) answer in the reference's error shape."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except grpc.RpcError as error:
            return error_response(FerryError.from_rpc_error(error))
        except FerryError as error:
            return error_response(error)
        except web.HTTPRequestEntityTooLarge:
            cap = request.app[MAX_BODY_BYTES]
            return json_error(413, f"the body is over the {cap}-byte cap", "BODY_TOO_LARGE")

    return answer


class QueueApi:
    def __init__(self, channel: StackChannel) -> None:
        self._channel = channel

    @property
    def _stub(self) -> inference_pb2_grpc.InferenceServiceAsyncStub:
        return inference_pb2_grpc.InferenceServiceStub(self._channel.channel)  # an aio channel's: the async stub

    # -- queue ---------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.StreamResponse:
        submitted = inference_pb2.SubmitRequest(
            **await _what_to_run(request),
            webhook_url=request.query.get(WEBHOOK_PARAMETER, ""),
            priority=_priority(request),
            start_timeout_seconds=_start_timeout(request),
        )
        answer = await self._stub.Submit(submitted, metadata=caller_metadata(request))
        urls = _RequestUrls(request, answer.request_id)
        body = {
            "request_id": answer.request_id,
            "response_url": urls.response,
            "status_url": urls.status,
            "cancel_url": urls.cancel,
        }
        return web.json_response(body, headers={REQUEST_ID_HEADER: answer.request_id})

    async def status(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        asked = inference_pb2.GetStatusRequest(request_id=request_id, with_logs=_wants_logs(request))
        status = await self._stub.GetStatus(asked, metadata=caller_metadata(request))
        body = _status_body(status, _RequestUrls(request, request_id), with_logs=asked.with_logs)
        code = 200 if body["status"] == "COMPLETED" else 202
        return web.json_response(body, status=code, headers={REQUEST_ID_HEADER: request_id})

    async def status_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events, one status document each, until COMPLETED (the last event)."""
        request_id = request.match_info["request_id"]
        follow = inference_pb2.StreamRequest(request_id=request_id)
        events = self._stub.Stream(follow, metadata=caller_metadata(request))
        documents = _stream_statuses(events, _RequestUrls(request, request_id), with_logs=_wants_logs(request))
        try:
            first = await anext(documents)  # a call that fails does so here, before the 200 is sent
        except StopAsyncIteration:
            raise Unavailable("the request's event stream ended early", reason="STREAM_ENDED") from None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", REQUEST_ID_HEADER: request_id}
        )
        await response.prepare(request)
        # A caller that leaves while nothing happens (a request queued for hours) stops the following at once.
        async with cancelled_when_client_leaves(request, events) as client:
            try:
                await response.write(_event(first))
                async for document in documents:
                    await response.write(_event(document))
            except grpc.RpcError as error:  # after the 200: the failure is the stream's last event
                failure = _failure(FerryError.from_rpc_error(error))
                await response.write(_event({"detail": failure["error"], "error_type": failure["error_type"]}, "error"))
            except asyncio.CancelledError:
                if not client.left:
                    raise
            finally:
                events.cancel()  # the caller left, or the request ended: stop following (the request runs on)
        return response

    async def result(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        asked = inference_pb2.GetResultRequest(request_id=request_id)
        answer = await self._stub.GetResult(asked, metadata=caller_metadata(request))
        return _output_response(answer.output_json, request_id)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        request_id = request.match_info["request_id"]
        answer = await self._stub.Cancel(
            inference_pb2.CancelRequest(request_id=request_id), metadata=caller_metadata(request)
        )
        headers = {REQUEST_ID_HEADER: request_id}
        if answer.cancelled:
            return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202, headers=headers)
        return web.json_response({"status": "ALREADY_COMPLETED"}, status=400, headers=headers)

    # -- run -----------------------------------------------------------------------------

    async def run(self, request: web.Request) -> web.StreamResponse:
        """Runs the request and answers its output."""
        asked = inference_pb2.RunRequest(**await _what_to_run(request))
        answer = await reply_unless_client_leaves(request, self._stub.Run(asked, metadata=caller_metadata(request)))
        if answer is None:  # a run for nobody was cancelled
            return json_error(499, "the client closed its connection", "CLIENT_CLOSED_REQUEST")
        return _output_response(answer.output_json, answer.request_id)


class _RequestUrls:
    """Where a request's status, result and cancel live, on the host and scheme the caller used."""

    def __init__(self, request: web.Request, request_id: str) -> None:
        app = f"{request.match_info['owner']}/{request.match_info['app']}"
        self.response = f"{request.scheme}://{request.host}{QUEUE_PREFIX}/{app}/requests/{request_id}"
        self.status = f"{self.response}/status"
        self.cancel = f"{self.response}/cancel"


def _output_response(output_json: str, request_id: str) -> web.Response:
    # The output is JSON already (the runner validated it): sent as it is, not parsed and dumped again.
    return web.Response(text=output_json, content_type="application/json", headers={REQUEST_ID_HEADER: request_id})


async def _what_to_run(request: web.Request) -> dict[str, Any]:
    """What a submit or a run names, as the fields SubmitRequest and RunRequest share: the app, the endpoint,
    the input (the body as it came: the server validates it against the endpoint's schema), the lifecycle."""
    try:
        # JSON is UTF-8 (RFC 8259): a Content-Type's charset is not looked up (an unknown one raised LookupError).
        input_json = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the body is not UTF-8 JSON", reason="INVALID_JSON") from None
    except RequestPayloadError as error:  # e.g. a body that is not the Content-Encoding it names
        raise InvalidArgument(f"the body cannot be read: {error}", reason="UNREADABLE_BODY") from None
    return {
        "app_id": request.match_info["app"],
        "path": "/" + request.match_info.get("path", "").strip("/"),
        "input_json": input_json,
        "lifecycle": _lifecycle(request),
    }


def _wants_logs(request: web.Request) -> bool:
    return request.query.get("logs", "").lower() in ("1", "true")


def _priority(request: web.Request) -> inference_pb2.RequestPriority.ValueType:
    value = request.headers.get(PRIORITY_HEADER, "normal").strip().lower()
    if value not in _PRIORITIES:
        raise InvalidArgument(f"{PRIORITY_HEADER} is normal or low, not {value[:20]!r}", reason="BAD_PRIORITY")
    return _PRIORITIES[value]


def _start_timeout(request: web.Request) -> float:
    value = request.headers.get(START_TIMEOUT_HEADER)
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidArgument(
            f"{START_TIMEOUT_HEADER} is a number of seconds above 0, not {value[:20]!r}", reason="BAD_START_TIMEOUT"
        )
    return seconds


def _lifecycle(request: web.Request) -> common_pb2.Lifecycle:
    value = request.headers.get(LIFECYCLE_HEADER)
    if value is None:
        return common_pb2.Lifecycle()
    # Read as the gRPC metadata header is: bounded, whole seconds, 1 s to 100 years (2**64 would overflow the field).
    return common_pb2.Lifecycle(expiration_seconds=preference_seconds(value, LIFECYCLE_HEADER))


def _log(line: inference_pb2.LogLine) -> dict[str, Any]:
    return {
        "message": line.message,
        "level": line.level.upper() or "INFO",
        "source": "USER",
        "timestamp": line.time.ToDatetime(UTC).isoformat(),
    }


def _progress(progress: inference_pb2.Progress) -> dict[str, Any]:
    """Ferry's addition to the reference's documents (its clients ignore fields they do not know)."""
    return {"current": progress.current, "total": progress.total, "message": progress.message}


def _status_body(status: inference_pb2.GetStatusResponse, urls: _RequestUrls, *, with_logs: bool) -> dict[str, Any]:
    name = _STATUS_NAMES.get(status.state, "IN_QUEUE")
    body: dict[str, Any] = {"status": name, "request_id": status.request_id, "response_url": urls.response}
    if name == "IN_QUEUE":
        body["queue_position"] = status.queue_position
        return body
    body["logs"] = [_log(line) for line in status.logs] if with_logs else None
    if name == "IN_PROGRESS" and status.HasField("progress"):
        body["progress"] = _progress(status.progress)
    if name == "COMPLETED":
        body["metrics"] = {}
        if status.HasField("error"):
            body.update(_failure(FerryError.from_request_error(status.error)))
    return body


def _failure(failure: FerryError) -> dict[str, str]:
    """A failed request's `error` and `error_type` (its reason, else its code's name: never empty)."""
    return {"error": failure.message, "error_type": failure.reason or failure.code.name}


async def _stream_statuses(
    events: AsyncIterable[inference_pb2.StreamResponse], urls: _RequestUrls, *, with_logs: bool
) -> AsyncIterator[dict[str, Any]]:
    """The Stream RPC's events as status documents; the logs accumulate, as GetStatus's would."""
    logs: list[dict[str, Any]] = []
    request_id = ""
    async for event in events:
        request_id = event.request_id or request_id
        kind = event.WhichOneof("event")
        base: dict[str, Any] = {"request_id": request_id, "response_url": urls.response}
        if kind == "queued":
            yield {"status": "IN_QUEUE", "queue_position": event.queued.position, **base}
        elif kind == "in_progress":
            logs += [_log(line) for line in event.in_progress.logs]
            document = {"status": "IN_PROGRESS", "logs": list(logs) if with_logs else None, **base}
            if event.in_progress.HasField("progress"):
                document["progress"] = _progress(event.in_progress.progress)
            yield document
        elif kind in ("completed", "failed"):
            document = {"status": "COMPLETED", "logs": logs if with_logs else None, "metrics": {}, **base}
            if kind == "failed":
                document.update(_failure(FerryError.from_request_error(event.failed.error)))
            yield document
            return


def _event(document: dict[str, Any], kind: str = "") -> bytes:
    """One server-sent event: a JSON document, of the default kind unless `kind` names one."""
    named = f"event: {kind}\n" if kind else ""
    return f"{named}data: {json.dumps(document)}\n\n".encode()
