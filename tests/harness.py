"""Real servers for tests: a background asyncio loop, an HTTP file server, and small terminal/socket helpers.

`ferry serve` subprocesses come from `ferry.testing.StackProcess`, which app authors use too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import socket
import struct
import subprocess
import termios
import threading
import time
import tty
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def wait_for(condition: Callable[[], T], what: str, timeout: float = 20) -> T:
    """Poll until `condition()` is truthy and return it; fail the test (not hang) if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def until(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """`wait_for` for a test on the event loop: awaits (polling every millisecond) instead of blocking it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(0.001)


class BackgroundLoop:
    """An asyncio loop on its own thread, so sync tests can host grpc.aio and aiohttp servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def serve_on_loopback(app: web.Application) -> tuple[web.AppRunner, str]:
    """`app` served on a free loopback port: its runner (`cleanup()` stops it) and its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class HttpFileServer:
    """A real aiohttp server: files under `root` (Range, ETag, HEAD via FileResponse), plus scripted routes.

    `route(path, handler)` installs a handler for misbehaving-server cases
    (lying Content-Length, stalls, redirects); `hits` counts requests per path
    and `requests` logs (method, path, headers) of each.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.routes: dict[str, Handler] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner, self.base_url = await serve_on_loopback(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        self.requests.append((request.method, request.path, dict(request.headers)))
        if handler := self.routes.get(request.path):
            return await handler(request)
        path = (self.root / request.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    def gets(self, path: str) -> list[dict[str, str]]:
        """Headers of each GET of `path` (HEADs are not transfers)."""
        return [headers for method, p, headers in self.requests if method == "GET" and p == path]

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add_file(self, name: str, data: bytes) -> str:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return self.url(name)

    def route(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url(path)


class RawHttpServer:
    """Reads each request's head, answers it with fixed bytes, then hangs up: for sources that break HTTP
    itself, and (answering no bytes at all) for endpoints that are down. `requests` counts the heads read."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(self.response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up first
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _read_until_closed(fd: int) -> bytes:
    """Everything written to the pty until the last holder of the terminal side closes it."""
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child exited and the terminal side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "the CLI never closed its terminal"
    return b"".join(chunks)


@contextmanager
def socket_bound_but_not_listening() -> Iterator[str]:
    """An address nothing answers on: bound (so no other test takes the port) but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def run_with_stderr_on_a_terminal(command: list[str], env: dict[str, str], columns: int = 80) -> tuple[int, str, str]:
    """Run `command` with stderr on a raw pty `columns` wide: (exit code, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # no output processing: a "\r" seen here is one the command wrote
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))  # rows, columns, pixels
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, text=True, env=env)
    finally:
        os.close(terminal)  # the child holds its own copy: EOF comes when it exits
    try:
        screen = _read_until_closed(controller).decode()
        stdout, _ = process.communicate(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stdout, screen
