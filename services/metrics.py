"""A stack's Prometheus metrics: one registry per stack, scraped at `/metrics` on the HTTP port.

Two stacks in one process count apart (each has its own registry, so nothing
here is a module-level metric). Label values come from small fixed sets —
service and method names, status codes, app ids — never from a URL, a file
name or an input, so a scrape leaks nothing a caller sent.

What is cheap to count is counted where it happens (`rpc_metrics.py` for every
RPC); what is a reading of state (a queue's depth) is read at scrape time by
the refreshers services register, so an idle stack does no metrics work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# Latencies from a cache hit (~1 ms) to a long generation (minutes).
RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

# A queued request may wait far longer than any RPC runs: up to an hour.
QUEUE_WAIT_BUCKETS = (*RPC_SECONDS_BUCKETS, 1800, 3600)

Refresher = Callable[[], Awaitable[None]]


class StackMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        self.rpc_requests = Counter(
            "ferry_rpc_requests",
            "RPCs answered, by service, method and status code",
            ["service", "method", "code"],
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "ferry_rpc_duration_seconds",
            "Time from an RPC's arrival to its last response message or status",
            ["service", "method"],
            buckets=RPC_SECONDS_BUCKETS,
            registry=registry,
        )
        self.rpc_in_flight = Gauge(
            "ferry_rpc_in_flight", "RPCs being answered now", ["service", "method"], registry=registry
        )
        self.queue_depth = Gauge(
            "ferry_queue_depth",
            "Requests waiting in an app's queue (the queue's own count, the same from every replica)",
            ["app"],
            registry=registry,
        )
        self.slots_busy = Gauge("ferry_app_slots_busy", "Handlers running on this replica", ["app"], registry=registry)
        self.slots_total = Gauge(
            "ferry_app_slots",
            "Handlers this replica may run at once (max_concurrency)",
            ["app"],
            registry=registry,
        )
        self.downloads = Counter(
            "ferry_downloads",
            "Downloads answered, by source (http, data, own: the stack's own storage) and outcome "
            "(hit, miss, forced, or the failure's reason)",
            ["source", "outcome"],
            registry=registry,
        )
        self.downloaded_bytes = Counter(
            "ferry_downloaded_bytes", "Bytes of files fetched (not hits), by source", ["source"], registry=registry
        )
        self.download_joins = Counter(
            "ferry_download_joins", "Downloads that joined one already in flight (single flight)", registry=registry
        )
        self.downloads_active = Gauge("ferry_downloads_active", "Transfers in flight now", registry=registry)
        self.download_retries = Counter(
            "ferry_download_retries",
            "Source attempts retried, by cause: connection (no answer: refused, reset, timed out), http_<status> "
            "(408, 429, 500, 502, 503, 504), cut_short (the body stopped early), bad_range (a resume's answer did "
            "not continue the file)",
            ["cause"],
            registry=registry,
        )
        self.download_resumes = Counter(
            "ferry_download_resumes",
            "Attempts after a body was cut short, by outcome: resumed (a Range request continued the bytes kept) "
            "or restarted (the source could not resume, so the bytes kept were dropped)",
            ["outcome"],
            registry=registry,
        )
        self.download_ranged = Counter(
            "ferry_download_ranged",
            "Downloads large enough to fetch in byte ranges over several connections, by outcome: ranged (they "
            "were), or fell_back_single (a range was answered whole, or from another version of the file, so it "
            "downloaded again over one connection)",
            ["outcome"],
            registry=registry,
        )
        self.download_cache_bytes = Gauge(
            "ferry_download_cache_bytes", "Bytes of downloaded files on disk (read at scrape)", registry=registry
        )
        self.download_cache_files = Gauge(
            "ferry_download_cache_files", "Downloaded files on disk (read at scrape)", registry=registry
        )
        self.download_evictions = Counter(
            "ferry_download_cache_evictions", "Downloads evicted to keep the cache within its budget", registry=registry
        )
        self.download_evicted_bytes = Counter(
            "ferry_download_cache_evicted_bytes", "Bytes of the downloads evicted", registry=registry
        )
        self.encodes = Counter(
            "ferry_encodes",
            "Encodes, by format and outcome (ok, or the refusal's reason)",
            ["format", "outcome"],
            registry=registry,
        )
        self.encode_seconds = Histogram(
            "ferry_encode_duration_seconds",
            "Time from an encode's header to its files stored",
            ["format"],
            buckets=RPC_SECONDS_BUCKETS,
            registry=registry,
        )
        self.encoded_bytes = Counter(
            "ferry_encoded_bytes", "Bytes of files encodes stored, by format", ["format"], registry=registry
        )
        self.encode_input_bytes = Counter(
            "ferry_encode_input_bytes",
            "Bytes of tensors (pixels, frames, samples, audio tracks) encodes took in, by format",
            ["format"],
            registry=registry,
        )
        self.stored_objects = Counter(
            "ferry_stored_objects",
            "Objects stored (encodes, uploads, completed multipart), by backend",
            ["backend"],
            registry=registry,
        )
        self.stored_bytes = Counter("ferry_stored_bytes", "Bytes stored, by backend", ["backend"], registry=registry)
        self.storage_failed_attempts = Counter(
            "ferry_storage_failed_attempts",
            "Storage calls that failed (retried or not), by backend",
            ["backend"],
            registry=registry,
        )
        self.storage_fallbacks = Counter(
            "ferry_storage_fallbacks",
            "Writes a backend could not take that went to the next",
            ["backend"],
            registry=registry,
        )
        self.multipart_uploads = Counter(
            "ferry_multipart_uploads",
            "Multipart uploads by event: started, completed, aborted",
            ["event"],
            registry=registry,
        )
        self.swept = Counter(
            "ferry_storage_swept", "Expired objects and idle multipart uploads the sweep removed", registry=registry
        )
        self.requests = Counter(
            "ferry_requests",
            "App requests this replica ran to an end, by app, endpoint and outcome (OK, or the failure's code)",
            ["app", "endpoint", "outcome"],
            registry=registry,
        )
        self.request_run_seconds = Histogram(
            "ferry_request_run_seconds",
            "Time from a request's start on this replica to its end (inputs, handler, output encodes)",
            ["app", "endpoint"],
            buckets=RPC_SECONDS_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "ferry_queue_wait_seconds",
            "Time from a request's submit to its take by a replica (by the queue's clock; a redelivered request's "
            "counts from its submit too)",
            ["app", "endpoint"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.redeliveries = Counter(
            "ferry_redeliveries", "Requests taken again after the replica running them died", ["app"], registry=registry
        )
        self.webhook_deliveries = Counter(
            "ferry_webhook_deliveries",
            "Webhook deliveries ended, by outcome: delivered, failed (attempts ran out), request_gone (its request "
            "expired before its result could be sent)",
            ["outcome"],
            registry=registry,
        )
        self.webhook_failed_attempts = Counter(
            "ferry_webhook_failed_attempts",
            "Webhook POSTs that did not deliver, by cause: status (the receiver answered other than 2xx), "
            "unreachable (no answer), refused (the network guard refused the address)",
            ["cause"],
            registry=registry,
        )
        self.health_probe_failures = Counter(
            "ferry_health_probe_failures",
            "Failed calls of an app's health-check endpoint, by app and cause: error (it raised), timeout (it "
            "overran), stuck (the last call had not returned yet)",
            ["app", "cause"],
            registry=registry,
        )
        self._refreshers: list[Refresher] = []

    def refresh_with(self, refresher: Refresher) -> None:
        """Run `refresher` before each scrape: it sets gauges that read state (a queue's depth)."""
        self._refreshers.append(refresher)

    async def exposition(self) -> bytes:
        """The text exposition format, every reading refreshed first."""
        for refresher in self._refreshers:
            await refresher()
        return generate_latest(self.registry)


def metrics_route(metrics: StackMetrics) -> web.RouteDef:
    """`GET /metrics`: behind no token (a scrape endpoint), and it holds only counts, sizes and durations."""

    async def scrape(_request: web.Request) -> web.Response:
        body = await metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return web.get("/metrics", scrape)
