"""Fixtures that start real servers on ephemeral loopback ports.

pytest-grpc supplies `grpc_addr`, `grpc_channel` and `grpc_stub`; its own
`grpc_server` starts a *sync* server, so it is overridden here to host our
grpc.aio servicers on a background event loop (the aio server is created
inside that loop, as grpc.aio requires), behind the status interceptor
`ferry serve` installs. A test module provides `grpc_add_to_server` and
`grpc_servicer` (and optionally `grpc_interceptors`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ferry.services.interceptors import StatusInterceptor
from ferry.testing import StackProcess
from tests.harness import BackgroundLoop, HttpFileServer, socket_bound_but_not_listening


@pytest.fixture(scope="session")
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def grpc_server(background_loop, grpc_addr, grpc_add_to_server, grpc_servicer, grpc_interceptors):
    async def start() -> grpc.aio.Server:
        server = grpc.aio.server(interceptors=[*(grpc_interceptors or ()), StatusInterceptor()])
        grpc_add_to_server(grpc_servicer, server)
        server.add_insecure_port(grpc_addr)
        await server.start()
        return server

    server = background_loop.run(start())
    yield server
    background_loop.run(server.stop(None))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback: a real HTTP S3 endpoint, not in-process mocking."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


AWS_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def aws_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for boto3 in this process (moto accepts any)."""
    for name, value in AWS_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def dead_address() -> Iterator[str]:
    """A host:port that refuses connections for the whole test: bound, so no other test takes it, never listening."""
    with socket_bound_but_not_listening() as address:
        yield address


@pytest.fixture
def http_server(background_loop, tmp_path: Path) -> Iterator[HttpFileServer]:
    """A real HTTP server over a temp dir, for download sources."""
    root = tmp_path / "http-root"
    root.mkdir()
    server = HttpFileServer(root)
    background_loop.run(server.start())
    yield server
    background_loop.run(server.stop())


@pytest.fixture
def start_ferry(tmp_path: Path) -> Iterator:
    """Start `ferry serve ARGS` (free ports, its own data dir); every started stack is stopped afterwards."""
    started: list[StackProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> StackProcess:
        stack = StackProcess(["--data-dir", str(tmp_path / f"data{len(started)}"), *args], env=env)
        started.append(stack)
        return stack.start()

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture
def ferry_serve(start_ferry) -> StackProcess:
    """The embedded stack (`ferry serve`, every service) in a subprocess."""
    return start_ferry()
