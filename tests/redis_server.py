"""A real redis-server for tests: on a free loopback port, in its own directory, gone when the test is done.

    with RedisServer() as server:            # RDB snapshots off: nothing on disk
        queue = await RedisQueue.connect(server.url)

    server = RedisServer(appendonly=True)   # every write fsynced to the AOF before Redis answers
    server.start(); ...; server.kill(); server.start()   # same port, same directory: what was written is back

Debian's `redis-server` package provides the binary; `make install` installs it where it is missing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# Redis starts in a few milliseconds; loading a large AOF takes longer, and a loaded CI machine longer still.
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files for a TLS-only server; clients trust `ca_file`."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer:
    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = None,
        tls: ServerCertificate | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make install` installs Debian's redis-server package")
        self.binary = binary
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self._directory = tempfile.TemporaryDirectory(prefix="ferry-redis-")
        self.directory = Path(self._directory.name)
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if self._process is not None:
            raise RuntimeError("this redis-server is already running")
        log = self.directory / "redis.log"
        # setpriv (util-linux) has the kernel kill the server when the test process dies, even by SIGKILL.
        orphan_guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        self._process = subprocess.Popen(
            [*orphan_guard, self.binary, *self._arguments(), "--logfile", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)
        return self

    def _arguments(self) -> list[str]:
        arguments = ["--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "", "--daemonize", "no"]
        if self.appendonly:
            # `always`: an acknowledged write survives even SIGKILL (the default, everysec, may lose a second).
            arguments += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        if self.tls is None:
            return [*arguments, "--port", str(self.port)]
        return [
            *arguments,
            *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(self.tls.cert_file), "--tls-key-file", str(self.tls.key_file)),
        ]

    def _answers(self) -> bool:
        """Whether the server replies to PING (NOAUTH counts: it is up, it wants the password)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as plain:
                if self.tls is None:
                    return _ping(plain)
                context = ssl.create_default_context(cafile=str(self.tls.ca_file))
                with context.wrap_socket(plain, server_hostname="127.0.0.1") as secure:
                    return _ping(secure)
        except OSError:
            return False

    def stop(self) -> None:
        """Shut down as an operator would (SIGTERM): Redis finishes its AOF before it exits."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the machine lost power, as far as Redis can tell."""
        self._end(signal.SIGKILL)

    def _end(self, how: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(how)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.kill()
        self._directory.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _ping(connection: socket.socket) -> bool:
    connection.sendall(b"PING\r\n")
    return connection.recv(64).startswith((b"+PONG", b"-NOAUTH"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
