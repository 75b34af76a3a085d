"""OpenTelemetry traces of a request's path through the stack, on only when the standard OTEL_* variables ask.

On when `OTEL_TRACES_EXPORTER` names `otlp`, or (with it unset) an OTLP endpoint is
set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); never
when `OTEL_SDK_DISABLED` is true. The exporter speaks OTLP over HTTP
(`http/protobuf`, the default) or gRPC (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc`)
and reads its endpoint, headers and timeouts from the OTEL_* variables itself, as
the batch processor (`OTEL_BSP_*`) and the sampler (`OTEL_TRACES_SAMPLER`) do.
`OTEL_SERVICE_NAME` overrides the service name `ferry serve` gives.

Off (the default, or the `[otel]` extra not installed): opentelemetry is never
imported, no provider is installed, the server adds no interceptor, and every
helper here returns before building anything: `span()` hands back one shared
no-op context.

Spans Ferry adds name what they are (`ferry.queue_wait`, `ferry.run`,
`ferry.handler`, `ferry.encode`, `ferry.store`); a download is its Download
RPC's span, with what it fetched added (a span more cost a cache hit 0.3 ms).
Their attributes are sizes, counts, formats, backends and a URL's host: never a full
URL, a query string, a header or an error message (which may quote user input).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

# Set once, by `start_tracing`, before any server starts: every helper below is a no-op while it is False.
ENABLED = False
_tracer: Any = None
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()

Attributes = Mapping[str, "AttributeValue"]

DEFAULT_SERVICE_NAMES: dict[tuple[str, ...], str] = {
    ("downloader",): "ferry-downloader",
    ("encoder",): "ferry-encoder",
    ("inference",): "ferry-inference",
}


def service_name(services: list[str]) -> str:
    """The default service.name of a stack hosting `services`: its one service's, else `ferry`."""
    return DEFAULT_SERVICE_NAMES.get(tuple(services), "ferry")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if exporters:
        return "otlp" in exporters
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _protocol(environ: Mapping[str, str]) -> str:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol[:40]!r} is not supported: use http/protobuf or grpc")
    return protocol


@dataclass(frozen=True)
class Tracing:
    """The installed provider: `shutdown()` exports what is still batched, then stops."""

    provider: TracerProvider

    def shutdown(self) -> None:
        self.provider.shutdown()


def start_tracing(default_service_name: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Install an OTLP-exporting tracer provider when the OTEL_* variables ask for one; None: tracing stays off.

    ValueError for a protocol no exporter here speaks. Asked for without the `[otel]` extra installed, it
    warns and stays off: a stack never fails to start for want of its traces.
    """
    global ENABLED, _tracer
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        return None
    protocol = _protocol(environ)
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    except ImportError as error:
        log.warning("OTEL_* asks for traces, but %s: install ferry-media[otel]; tracing is off", error)
        return None
    name = environ.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # handlers' own spans (opentelemetry.trace.get_tracer) join the same traces
    _tracer = provider.get_tracer("ferry")
    ENABLED = True
    log.info("tracing on: service.name=%s, OTLP over %s", name, protocol)
    return Tracing(provider)


# -- spans -------------------------------------------------------------------------------


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span | None]:
    """A span, current while the block runs, child of the current one; a shared no-op when tracing is off.

    Its status is ERROR when the block raises, described by the error's type and reason only.
    """
    if not ENABLED:
        return _NO_SPAN
    return _current_span(name, attributes)


@contextlib.contextmanager
def _current_span(name: str, attributes: Attributes | None) -> Iterator[Span]:
    with _tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as error:
            failed(current, error)
            raise


def failed(span: Span, error: BaseException) -> None:
    """ERROR status naming the error's type and, for Ferry's errors, its code and reason: never its message."""
    from opentelemetry.trace import StatusCode

    code = getattr(getattr(error, "code", None), "name", None)
    reason = getattr(error, "reason", None)
    description = " ".join(str(part) for part in (type(error).__name__, code, reason) if part)
    span.set_status(StatusCode.ERROR, description)
    span.set_attribute("error.type", type(error).__name__)


def annotate(attributes: Attributes) -> None:
    """Attributes of what the current span did, known only at its end (sizes, the backend that took a write)."""
    if not ENABLED:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def record_outcome(code: str) -> None:
    """How the current span's work ended, a status code's name: its `ferry.outcome`, and ERROR unless OK."""
    if not ENABLED:
        return
    from opentelemetry import trace
    from opentelemetry.trace import StatusCode

    current = trace.get_current_span()
    current.set_attribute("ferry.outcome", code)
    if code != "OK":
        current.set_status(StatusCode.ERROR, code)


# -- across the queue: the submitter's context in the request's record ------------------------


def traceparent() -> str:
    """The current span's W3C `traceparent`, to carry where metadata cannot (the request queue); "" when off."""
    if not ENABLED:
        return ""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def remote_parent(traceparent: str) -> Context | None:
    """The context a `traceparent()` string names; None when off or empty."""
    if not ENABLED or not traceparent:
        return None
    from opentelemetry import propagate

    return propagate.extract({"traceparent": traceparent})


def continued(parent: Context | None) -> AbstractContextManager[Any]:
    """`parent` current while the block runs (tasks it creates inherit it); a no-op for None."""
    if parent is None:
        return _NO_SPAN
    from opentelemetry import context

    return _attached(context, parent)


@contextlib.contextmanager
def _attached(context: Any, parent: Context) -> Iterator[None]:
    token = context.attach(parent)
    try:
        yield
    finally:
        context.detach(token)


def past_span(name: str, began_at: float, parent: Context | None, attributes: Attributes | None = None) -> None:
    """A span already over: from `began_at` (wall-clock seconds, as another process may have read it) to now."""
    if not ENABLED or began_at <= 0:
        return
    now_ns = time.time_ns()
    began_ns = min(int(began_at * 1e9), now_ns)
    _tracer.start_span(name, context=parent, attributes=attributes, start_time=began_ns).end(end_time=now_ns)


def url_host(url: str) -> str:
    """A URL's host alone, what a span may say of it: never its path, query, user or port ("" for a data URI)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def current_ids() -> tuple[str, str] | None:
    """The current span's (trace id, span id) as lowercase hex (32 and 16 digits); None when off or no span is
    current. For log lines that name the trace they belong to."""
    if not ENABLED:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
