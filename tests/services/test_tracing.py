"""Tracing is on only when the OTEL_* variables ask; off, or without the `[otel]` extra, nothing changes.

The trace of a whole run across a split stack is tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ferry import tracing as sdk_tracing
from ferry.services import tracing

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "mine", "OTEL_BSP_SCHEDULE_DELAY": "100"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ],
)
def test_traces_are_on_only_when_the_otel_variables_ask_for_them(environ, on):
    assert tracing.wanted(environ) is on


def test_a_protocol_no_exporter_speaks_is_refused_in_words():
    with pytest.raises(ValueError, match="http/json"):
        tracing.start_tracing("ferry", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_each_service_alone_has_its_own_default_name_and_a_stack_of_several_is_ferry():
    assert [tracing.service_name([s]) for s in ("downloader", "encoder", "inference")] == [
        "ferry-downloader",
        "ferry-encoder",
        "ferry-inference",
    ]
    assert tracing.service_name(["downloader", "encoder", "inference"]) == "ferry"
    assert tracing.service_name(["downloader", "encoder"]) == "ferry"


def test_a_span_may_name_a_urls_host_but_nothing_else_of_it():
    assert tracing.url_host("https://user:secret@Example.com:8443/a/b.png?X-Amz-Signature=abc#f") == "example.com"
    assert tracing.url_host("data:image/png;base64,AAAA") == ""
    assert tracing.url_host("http://[::1") == ""  # unparseable: nothing, not the URL


def test_with_no_otel_variables_no_provider_exporter_or_interceptor_is_installed():
    """In a fresh process, as `ferry serve` starts: nothing of opentelemetry is even imported."""
    script = (
        "import os, sys\n"
        "for name in [n for n in os.environ if n.startswith('OTEL_')]: del os.environ[n]\n"
        "from ferry.services import launch, tracing\n"
        "assert tracing.start_tracing(tracing.service_name(['inference'])) is None\n"
        "assert not tracing.ENABLED and launch._tracing_interceptors() == []\n"
        "with tracing.span('ferry.handler') as span: assert span is None\n"
        "assert tracing.traceparent() == '' and tracing.current_ids() is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'opentelemetry was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)


def test_the_sdk_passes_the_callers_current_span_on_as_w3c_trace_context():
    assert sdk_tracing.trace_metadata() == (), "no span current: nothing to pass on"
    tracer = TracerProvider().get_tracer("caller")
    with tracer.start_as_current_span("caller") as span:
        metadata = dict(sdk_tracing.trace_metadata())
    ids = span.get_span_context()
    assert metadata["traceparent"].startswith(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-")


def test_without_the_otel_extra_a_stack_asked_to_trace_serves_and_the_sdk_passes_nothing(
    start_ferry, tmp_path, monkeypatch
):
    """The packages missing (their import blocked in both processes): the stack warns once and serves."""
    blocked = tmp_path / "no-otel"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text("import sys\nsys.modules['opentelemetry'] = None\n")
    stack = start_ferry(env={"PYTHONPATH": str(blocked), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    assert not sdk_tracing.in_use() and sdk_tracing.trace_metadata() == ()
    with stack.client() as client:
        stored = client.upload_bytes(b"traced by nobody", "text/plain", "note.txt")
        assert client.download_file(stored.url).read_bytes() == b"traced by nobody"
    assert "install ferry-media[otel]; tracing is off" in stack.stop()


@pytest.mark.parametrize(("protocol", "exporter"), [("grpc", ".grpc."), ("http/protobuf", ".http."), ("", ".http.")])
def test_the_exporter_speaks_the_protocol_the_variables_name(protocol, exporter):
    script = (
        "from ferry.services import tracing\n"
        "traces = tracing.start_tracing('ferry-encoder')\n"
        "assert tracing.ENABLED and traces is not None\n"
        "processor = traces.provider._active_span_processor._span_processors[0]\n"
        "print(type(processor._batch_processor._exporter).__module__)\n"
        "print(traces.provider.resource.attributes['service.name'])\n"
        "traces.shutdown()\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    module, name = done.stdout.split()
    assert exporter in module and name == "ferry-encoder"
