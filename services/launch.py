"""`ferry serve`: host the services on one grpc.aio server, plus the CDN HTTP server.

`ferry serve` hosts everything (the embedded default); `ferry serve downloader`
(or any subset) hosts only those, so each service can scale on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
from aiohttp import web
from grpc_reflection.v1alpha import reflection

from ferry.client import DOWNLOADER_SERVICE, ENCODER_SERVICE, INFERENCE_SERVICE
from ferry.connection import Connection, StackTarget
from ferry.services import config as config_module
from ferry.services import tracing
from ferry.services.auth import BearerTokenInterceptor
from ferry.services.config import (
    LOCAL_SPEC,
    DownloaderConfig,
    EncoderConfig,
    InferenceConfig,
    ServerConfig,
    StackConfig,
    StorageConfig,
)
from ferry.services.gateway.channel import StackChannel
from ferry.services.gateway.cors import enable_cors
from ferry.services.gateway.http_errors import close_after_an_unreadable_body, json_errors_middleware
from ferry.services.gateway.routes import add_gateway_routes
from ferry.services.health import add_health
from ferry.services.interceptors import StatusInterceptor
from ferry.services.logs import configure_logging
from ferry.services.memory import keep_freed_memory
from ferry.services.metrics import StackMetrics, metrics_route
from ferry.services.rpc_metrics import MetricsInterceptor
from ferry.services.rpc_request_scope import RequestScopeInterceptor
from ferry.services.runtime import Closer, Hosted, Runtime
from ferry.services.storage.assembly import build_storage
from ferry.services.storage.cdn import create_cdn_app
from ferry.services.storage.chain import StorageChain
from ferry.services.storage.sweeper import run_sweeper
from ferry.sizes import MESSAGE_BYTES, MIB

log = logging.getLogger("ferry.serve")


@dataclass(frozen=True)
class HostedService:
    full_name: str
    module: str  # has `async def host(server, config, runtime) -> Hosted`; imported only when hosted
    needs_cdn: bool = False

    async def host(self, server: grpc.aio.Server, config: StackConfig, runtime: Runtime) -> Hosted:
        return await importlib.import_module(self.module).host(server, config, runtime)  # type: ignore[no-any-return]


SERVICES: dict[str, HostedService] = {
    "downloader": HostedService(DOWNLOADER_SERVICE, "ferry.services.downloader.servicer"),
    "encoder": HostedService(ENCODER_SERVICE, "ferry.services.encoder.servicer", needs_cdn=True),
    "inference": HostedService(INFERENCE_SERVICE, "ferry.inference.servicer"),
}


def max_receive_bytes(config: StackConfig) -> int:
    """Room for the largest data: URI a Download request may carry (base64 is 4/3 of the bytes).

    Everything else streams in ≤ 1 MiB messages; only this one request body is
    inherently whole, and the data-URI cap bounds it.
    """
    return max(4 * MIB, int(config.downloader.data_uri_limit_mib * MIB * 4 / 3) + MESSAGE_BYTES)


def server_options(config: StackConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_receive_bytes(config)),
        # The SDK pings every 30 s to keep long, quiet streams alive through
        # proxies; accept that instead of answering GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        # Larger HTTP/2 windows for streams of 1 MiB messages (tensors, uploads):
        # measured 0.84 → 1.54 GB/s of raw bytes over loopback.
        ("grpc.http2.lookahead_bytes", 8 << 20),
        # gRPC shares a port with any process that also asks for it (SO_REUSEPORT): a second `ferry serve`
        # on a taken port would silently take half the calls. It fails to start instead.
        ("grpc.so_reuseport", 0),
    ]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bindable(host: str, port: int, what: str) -> None:
    """CannotStart, in words, when `host:port` cannot be bound.

    (The address is not this machine's, or the port is taken.)
    """
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, protocol, _, where in addresses:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a restart is not refused
                probe.bind(where)
    except OSError as error:
        raise CannotStart(
            f"cannot listen on {_hostport(host, port)[:200]} for {what}: {error.strerror or error}"
        ) from None


def _read(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tracing_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The server-span interceptor while tracing is on (it imports opentelemetry); none otherwise."""
    if not tracing.ENABLED:
        return []
    from ferry.services.rpc_tracing import TracingInterceptor

    return [TracingInterceptor()]


class CannotStart(Exception):
    """What keeps the stack from starting that its operator must fix: a folder, an address, a certificate."""


class Stack:
    """The running servers of one `ferry serve`: start, report where, drain on stop."""

    def __init__(self, config: StackConfig, services: Sequence[str]) -> None:
        self.config = config
        self.hosted = [SERVICES[name] for name in services]
        self._closers: list[Closer] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._storage: StorageChain | None = None
        self.grpc_port = 0
        self.cdn_url: str | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: Any = None
        self._cdn: web.AppRunner | None = None
        self.metrics = StackMetrics()
        self._metrics_server: web.AppRunner | None = None
        self.metrics_url: str | None = None
        self._gateway: StackChannel | None = None

    async def start(self) -> None:
        cfg = self.config.server
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CannotStart(f"--data-dir {str(cfg.data_dir)[:200]!r}: {error.strerror or error}") from None
        if any(s.needs_cdn for s in self.hosted):
            await self._start_storage()
        elif SERVICES["downloader"] in self.hosted:
            self._reach_buckets()
        # The token check first: an unauthenticated call learns nothing, not even that its request was malformed.
        # Metrics outermost: a call the token check refuses is counted too.
        # Tracing, when on, outermost of all: its span covers the rest, and is the parent of what the call does.
        # A call made for a request runs in its scope inside the token check and outside the status interceptor,
        # so even a bug's logged traceback names the request.
        interceptors = [
            *_tracing_interceptors(),
            *([] if cfg.no_metrics else [MetricsInterceptor(self.metrics)]),
            *([BearerTokenInterceptor(cfg.token)] if cfg.token else []),
            *([RequestScopeInterceptor()] if self._serves_requests_upstream() else []),
            StatusInterceptor(),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=server_options(self.config))
        # The port first: hosted apps are told where this server is before anything is served.
        self.grpc_port = self._listen(server)
        names = [s.full_name for s in self.hosted]
        self._health = await add_health(server, names)
        runtime = Runtime(health=self._health, upstream=self._upstream(), storage=self._storage, metrics=self.metrics)
        serving = []
        for service in self.hosted:
            hosted = await service.host(server, self.config, runtime)
            self._closers.append(hosted.close)
            if hosted.serving is not None:
                serving.append(hosted.serving)
        reflection.enable_server_reflection([*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], server)
        await server.start()
        self._grpc = server
        if cfg.metrics_port is not None and not cfg.no_metrics:
            await self._start_metrics(cfg.metrics_port)
        for start in serving:
            await start()

    def _listen(self, server: grpc.aio.Server) -> int:
        cfg = self.config.server
        address = _hostport(cfg.host, cfg.grpc_port)
        _check_bindable(cfg.host, cfg.grpc_port, "gRPC")  # before gRPC's own attempt, which logs its failure raw
        try:
            if cfg.tls_cert:
                credentials = grpc.ssl_server_credentials([(_read(cfg.tls_key), _read(cfg.tls_cert))])
                return server.add_secure_port(address, credentials)
            return server.add_insecure_port(address)
        except (RuntimeError, OSError) as error:  # grpc raises RuntimeError for an address it cannot bind
            raise CannotStart(f"cannot listen on {address[:200]} for gRPC: {error}") from None

    def _here(self) -> str:
        """This server's gRPC address as a process on this machine reaches it."""
        cfg = self.config.server
        return _hostport("127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host, self.grpc_port)

    def _serves_requests_upstream(self) -> bool:
        """Whether runners call this server for their requests (it hosts the downloader or the encoder)."""
        return SERVICES["downloader"] in self.hosted or SERVICES["encoder"] in self.hosted

    def _upstream(self) -> StackTarget:
        """Where hosted apps' downloads and encodes go: this server, unless --downloader / --encoder say otherwise."""
        cfg, inference = self.config.server, self.config.inference
        tls = cfg.tls_cert is not None
        connection = Connection(inference.downloader or self._here(), cfg.token, cfg.tls_cert if tls else None, tls)
        return StackTarget(connection, inference.encoder or (self._here(),))

    def _gateway_connection(self) -> Connection:
        """How the HTTP face calls this server: without a token of its own (each call forwards its caller's)."""
        tls_cert = self.config.server.tls_cert
        return Connection(self._here(), None, tls_cert, tls_cert is not None)

    async def _start_storage(self) -> None:
        """Storage and the CDN that serves its local files; local URLs need the CDN's address first."""
        storage_config = self.config.storage
        chain, local = build_storage(storage_config, self.config.server.data_dir, lambda: self.public_url, self.metrics)
        await self._start_cdn(local)
        self._storage = chain
        self._sweeper = asyncio.create_task(run_sweeper(chain, storage_config.sweep_interval_seconds))
        self._closers.append(chain.close)

    def _reach_buckets(self) -> None:
        """A downloader without the encoder reads the stack's own S3 URLs from the buckets its storage
        configuration names (local storage is another machine's disk: its CDN is reached over HTTP)."""
        storage_config = self.config.storage
        buckets = tuple(spec for spec in storage_config.storage if spec != LOCAL_SPEC)
        if buckets:
            chain, _ = build_storage(
                replace(storage_config, storage=buckets),
                self.config.server.data_dir,
                lambda: self.public_url,
                self.metrics,
            )
            self._storage = chain
            self._closers.append(chain.close)

    @property
    def public_url(self) -> str:
        """Where users reach stored files: --public-url, else the CDN's own address."""
        return (self.config.storage.public_url or self.cdn_url or "").rstrip("/")

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The HTTP servers' TLS, from --tls-cert/--tls-key (the gRPC server's); None: plain HTTP."""
        cfg = self.config.server
        if not cfg.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (ssl.SSLError, OSError) as error:
            raise CannotStart(f"--tls-cert / --tls-key cannot be loaded: {error}") from None
        return context

    async def _serve_http(self, app: web.Application, port: int, what: str) -> tuple[web.AppRunner, str]:
        """`app` listening on `port` of --host; its runner and base URL."""
        cfg, ssl_context = self.config.server, self._ssl_context()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise CannotStart(
                f"cannot listen on {_hostport(cfg.host, port)[:200]} for {what}: {error.strerror or error}"
            ) from None
        bound = runner.addresses[0][1]
        return runner, f"{'https' if ssl_context else 'http'}://{_hostport(cfg.host, bound)}"

    async def _start_cdn(self, local: Any) -> None:
        cfg = self.config.server
        max_body_bytes = max_receive_bytes(self.config)  # what the gRPC server behind the HTTP routes accepts
        app = create_cdn_app(cfg.token, local, max_body_bytes=max_body_bytes)
        app.middlewares.insert(0, json_errors_middleware)
        app.on_response_prepare.append(close_after_an_unreadable_body)
        if cfg.cors_origin:
            enable_cors(app, cfg.cors_origin)
        if tracing.ENABLED:  # outermost: the span covers the answer every other middleware makes
            from ferry.services.gateway.http_tracing import tracing_middleware

            app.middlewares.insert(0, tracing_middleware)
        self._gateway = StackChannel(self._gateway_connection)
        add_gateway_routes(app, self._gateway, max_body_bytes)
        if not cfg.no_metrics:
            app.add_routes([metrics_route(self.metrics)])
        self._cdn, self.cdn_url = await self._serve_http(app, cfg.cdn_port, "the CDN")

    async def _start_metrics(self, port: int) -> None:
        """/metrics alone on a port of its own: for a stack that hosts no CDN (`ferry serve inference`)."""
        app = web.Application()
        app.add_routes([metrics_route(self.metrics)])
        self._metrics_server, self.metrics_url = await self._serve_http(app, port, "metrics")

    @property
    def ready_line(self) -> str:
        line = f"ferry ready grpc={_hostport(self.config.server.host, self.grpc_port)}"
        line += f" cdn={self.cdn_url}" if self.cdn_url else ""
        return line + (f" metrics={self.metrics_url}/metrics" if self.metrics_url else "")

    async def stop(self) -> None:
        """Report NOT_SERVING, let in-flight calls finish (up to drain_seconds), then close."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(self.config.server.drain_seconds)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for close in self._closers:
            await close()
        for http_server in (self._cdn, self._metrics_server):
            if http_server is not None:
                await http_server.cleanup()
        if self._gateway is not None:
            await self._gateway.close()


async def serve(config: StackConfig, services: Sequence[str], apps: Sequence[Any] = ()) -> int:
    """Run until SIGTERM or SIGINT; the exit status (1: the stack could not start, said in one line)."""
    try:
        traces = tracing.start_tracing(tracing.service_name(list(services)))
    except ValueError as error:
        print(f"ferry serve: {error}", file=sys.stderr)
        return 1
    try:
        return await _serve_stack(config, services, apps)
    finally:
        if traces is not None:
            # Spans still batched go out before the process ends (a short-lived stack's would be lost).
            await asyncio.to_thread(traces.shutdown)


async def _serve_stack(config: StackConfig, services: Sequence[str], apps: Sequence[Any]) -> int:
    stack = Stack(config, services)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stack.start()
    except CannotStart as error:
        print(f"ferry serve: {error}", file=sys.stderr)
        await stack.stop()
        return 1
    print(stack.ready_line, flush=True)
    for app in apps:  # stdout keeps the one ready line; what is hosted goes to the log
        endpoints = ", ".join(path + (" (realtime)" if spec.realtime else "") for path, spec in app.endpoints.items())
        log.info("hosting app %s (%s): %s", app.app_id, app.app_class.__qualname__, endpoints)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %ss", config.server.drain_seconds)
    await stack.stop()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry serve", description="Run ferry's services on one gRPC port, plus the CDN."
    )
    parser.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"services to host ({', '.join(SERVICES)}); default: all",
    )
    config_module.add_arguments(parser, ServerConfig)
    config_module.add_arguments(parser, DownloaderConfig)
    config_module.add_arguments(parser, EncoderConfig)
    config_module.add_arguments(parser, StorageConfig)
    config_module.add_arguments(parser, InferenceConfig)
    return parser


def config_from_arguments(args: argparse.Namespace) -> StackConfig:
    """The stack's configuration from parsed `ferry serve` flags, FERRY_* variables and defaults (ValueError names
    the flag of a value out of range)."""
    return StackConfig(
        server=config_module.from_arguments(ServerConfig, args),
        downloader=config_module.from_arguments(DownloaderConfig, args),
        encoder=config_module.from_arguments(EncoderConfig, args),
        storage=config_module.from_arguments(StorageConfig, args),
        inference=config_module.from_arguments(InferenceConfig, args),
    )


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    unknown = sorted(set(args.services) - set(SERVICES))
    if unknown:
        print(f"ferry serve: unknown service {', '.join(unknown)} (choose from {', '.join(SERVICES)})", file=sys.stderr)
        return 2
    try:
        config = config_from_arguments(args)
    except ValueError as error:
        print(f"ferry serve: {error}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_format)
    services = args.services or list(SERVICES)
    try:
        apps = _hosted_apps(config.inference.app) if "inference" in services else []
    except ValueError as error:
        print(f"ferry serve: {error}", file=sys.stderr)
        return 2
    keep_freed_memory()
    return asyncio.run(serve(config, services, apps))


def _hosted_apps(specs: Sequence[str]) -> list[Any]:
    """Each `--app`, loaded and checked before anything starts: one that names no usable App is a
    ValueError of one line, not a traceback from inside the server's start.

    Errors raised by the app module's own code are not caught: their traceback is what its author needs.
    """
    from ferry.inference.app import AppLoadError, AppSpec, describe, load_app

    apps: list[AppSpec] = []
    for spec in specs:
        try:
            app_class = load_app(spec)
        except AppLoadError as error:  # its message names the spec
            raise ValueError(f"--app: {error}") from None
        try:
            app = describe(app_class)
        except (TypeError, ValueError) as error:  # describe's verdict on a malformed App class
            raise ValueError(f"--app {spec[:200]!r}: {error}") from None
        if any(other.app_id == app.app_id for other in apps):
            raise ValueError(f"--app {spec[:200]!r}: another app already has the id {app.app_id!r} (set app_id on one)")
        apps.append(app)
    return apps
