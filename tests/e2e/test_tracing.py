"""Traces across a split stack: one `ferry.run` of the upscaler is one trace, from the caller's span down.

The stack is three `ferry serve` processes (downloader, encoder, inference) that
export over OTLP/HTTP to a real receiver this test runs on loopback; it decodes
what arrives with opentelemetry-proto's own messages.
"""

from __future__ import annotations

import gzip
import io
import json
import secrets
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from PIL import Image as PILImage

from ferry.testing import StackProcess
from tests.harness import serve_on_loopback, wait_for

UPSCALER = "ferry.inference.apps.upscale:Upscaler"
SAMPLE_APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
# A signature-like query string: no span may carry it (nor the URL's path).
SECRET_QUERY = "X-Amz-Signature=not-for-traces"


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (POST /v1/traces, protobuf), keeping every span and the raw bodies."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner, self.url = await serve_on_loopback(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            service=resource.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def named(self, name: str, trace_id: str) -> ReceivedSpan:
        found = [s for s in self.spans if s.name == name and s.trace_id == trace_id]
        assert len(found) == 1, f"one {name} span in the trace, got {len(found)}: {self.spans}"
        return found[0]


def _value(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver(background_loop) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    background_loop.run(receiver.start())
    yield receiver
    background_loop.run(receiver.stop())


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    """Traces to the receiver, flushed within a tenth of a second; the service names are Ferry's defaults."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "",
        "OTEL_TRACES_EXPORTER": "",
        "OTEL_SDK_DISABLED": "",
    }


def png_bytes(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def split_stack(tmp_path: Path, env: dict[str, str]) -> list[StackProcess]:
    """`ferry serve downloader`, `ferry serve encoder` and `ferry serve inference` reaching them, started."""
    downloader = StackProcess(
        ["downloader", "--data-dir", str(tmp_path / "d"), "--allow-hosts", "127.0.0.1/32"], env=env
    ).start()
    encoder = StackProcess(["encoder", "--data-dir", str(tmp_path / "e")], env=env).start()
    inference = StackProcess(
        [
            "inference",
            "--data-dir",
            str(tmp_path / "i"),
            "--downloader",
            downloader.grpc_address,
            "--encoder",
            encoder.grpc_address,
            "--app",
            UPSCALER,
        ],
        env=env,
    ).start()
    return [downloader, encoder, inference]


def test_one_run_of_the_upscaler_is_one_trace_parented_across_the_three_processes(tmp_path, http_server, receiver):
    picture = png_bytes(6, 4)
    (http_server.root / "in.png").write_bytes(picture)
    url = f"{http_server.base_url}/in.png?{SECRET_QUERY}"
    stack = split_stack(tmp_path, otel_env(receiver))
    inference = stack[-1]
    tracer = TracerProvider().get_tracer("the caller")  # the caller's own tracing, not installed globally
    try:
        with tracer.start_as_current_span("caller") as caller, inference.client() as client:
            output = client.run("upscaler", {"image_url": url, "scale": 2})
    finally:
        for process in reversed(stack):
            process.stop()  # a drained process exports what it still holds
    assert (output["image"]["width"], output["image"]["height"]) == (12, 8)
    trace_id = f"{caller.get_span_context().trace_id:032x}"
    caller_id = f"{caller.get_span_context().span_id:016x}"
    expected = {
        *("ferry.v1.DownloaderService/Download", "ferry.handler", "ferry.encode", "ferry.store"),
        *("ferry.run", "ferry.queue_wait"),
    }
    wait_for(
        lambda: expected <= {s.name for s in receiver.spans if s.trace_id == trace_id},
        "the stack's spans at the receiver",
        timeout=30,
    )

    run_rpc = receiver.named("ferry.v1.InferenceService/Run", trace_id)
    assert (run_rpc.service, run_rpc.parent_id) == ("ferry-inference", caller_id), "the caller's span is the parent"
    assert run_rpc.attributes["rpc.grpc.status_code"] == 0
    run = receiver.named("ferry.run", trace_id)
    assert (run.service, run.parent_id) == ("ferry-inference", run_rpc.span_id), "across the queue"
    assert run.attributes["ferry.app"] == "upscaler" and run.attributes["ferry.outcome"] == "OK"
    assert receiver.named("ferry.queue_wait", trace_id).parent_id == run_rpc.span_id
    handler = receiver.named("ferry.handler", trace_id)
    assert (handler.service, handler.parent_id) == ("ferry-inference", run.span_id)

    download = receiver.named("ferry.v1.DownloaderService/Download", trace_id)  # the RPC's span says what it fetched
    assert (download.service, download.parent_id) == ("ferry-downloader", run.span_id)
    assert download.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "ferry.v1.DownloaderService",
        "rpc.method": "Download",
        "rpc.grpc.status_code": 0,
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "ferry.download.bytes": len(picture),
        "ferry.download.cache_hit": False,
    }

    encode_rpc = receiver.named("ferry.v1.EncoderService/Encode", trace_id)
    assert (encode_rpc.service, encode_rpc.parent_id) == ("ferry-encoder", run.span_id)
    encode = receiver.named("ferry.encode", trace_id)
    assert (encode.service, encode.parent_id) == ("ferry-encoder", encode_rpc.span_id)
    assert encode.attributes["ferry.encode.content_type"] == "image/png"
    store = receiver.named("ferry.store", trace_id)
    assert (store.service, store.parent_id) == ("ferry-encoder", encode.span_id)
    assert store.attributes["ferry.store.backend"] == "local"

    exported = b"".join(receiver.bodies)
    for leak in (SECRET_QUERY.encode(), b"in.png", b"://"):
        assert leak not in exported, f"{leak!r} was exported"


def test_a_request_through_the_http_face_is_one_trace_with_the_rpc_and_the_run_it_started(tmp_path, receiver):
    stack = StackProcess(["--data-dir", str(tmp_path / "s"), "--app", SAMPLE_APP], env=otel_env(receiver)).start()
    trace_id, caller_id = secrets.token_hex(16), secrets.token_hex(8)
    try:
        answer = urllib.request.urlopen(
            urllib.request.Request(
                f"{stack.cdn_url}/run/local/sample?{SECRET_QUERY}",
                data=json.dumps({"text": "hi", "times": 2}).encode(),
                headers={"Content-Type": "application/json", "traceparent": f"00-{trace_id}-{caller_id}-01"},
            ),
            timeout=30,
        )
        assert json.loads(answer.read()) == {"text": "hihi"}
        with urllib.request.urlopen(f"{stack.cdn_url}/metrics", timeout=30) as scrape:
            scrape.read()
        wait_for(
            lambda: {"ferry.run", "POST /run/{owner}/{app}"} <= {s.name for s in receiver.spans},
            "the stack's spans at the receiver",
            timeout=30,
        )
    finally:
        stack.stop()

    http = receiver.named("POST /run/{owner}/{app}", trace_id)
    assert (http.service, http.parent_id) == ("ferry", caller_id), "the HTTP caller's span is the parent"
    assert http.attributes == {
        "http.request.method": "POST",
        "http.route": "/run/{owner}/{app}",
        "http.response.status_code": 200,
    }
    run_rpc = receiver.named("ferry.v1.InferenceService/Run", trace_id)
    assert run_rpc.parent_id == http.span_id, "the gateway's gRPC call is the HTTP span's child"
    assert receiver.named("ferry.run", trace_id).parent_id == run_rpc.span_id
    assert not [s for s in receiver.spans if "metrics" in s.name], "scrapes are not traced"
    assert SECRET_QUERY.encode() not in b"".join(receiver.bodies)
