"""The caller's OpenTelemetry span goes along with every SDK call: W3C trace context in the gRPC metadata.

opentelemetry is optional (the `[otel]` extra) and never imported here: a
process that has not imported `opentelemetry.trace` has no span to pass on, so
its channels carry nothing and cost nothing. One that has (it set up tracing, or
a Ferry server traces) gets the globally configured propagator's headers
(`traceparent`, `tracestate`, `baggage` by default) on each call made while a
span is current.
"""

from __future__ import annotations

import sys


def in_use() -> bool:
    """Whether this process uses OpenTelemetry: a channel opened now passes the caller's spans on."""
    return sys.modules.get("opentelemetry.trace") is not None


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's trace context as gRPC metadata; () when no span is current."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return ()
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
