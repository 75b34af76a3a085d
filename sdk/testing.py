"""Start a real ferry stack for tests and scripts: `ferry serve` in a subprocess on free ports.

    with StackProcess(["--data-dir", tmp]) as stack:
        with stack.client() as client:
            assert client.health() == "SERVING"

The subprocess keeps the SDK free of the services' imports and gives tests
the same process boundary production has.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ferry.client import Client


class StackProcess:
    """`ferry serve ARGS` in a subprocess; knows its gRPC address and CDN URL once ready."""

    def __init__(self, args: Sequence[str] = (), env: dict[str, str] | None = None, *, free_ports: bool = True) -> None:
        ports = ["--grpc-port", "0", "--cdn-port", "0"] if free_ports else []
        self.args = [*ports, *args]  # later flags win, so callers may still pin a port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.stderr = ""
        self.grpc_address = ""
        self.cdn_url = ""
        self.metrics_url = ""  # /metrics on its own port (--metrics-port), when asked for
        self._stderr_lines: list[str] = []
        self._stderr_reader: threading.Thread | None = None

    def start(self, timeout: float = 60) -> StackProcess:
        command = [sys.executable, "-m", "ferry.cli", "serve", *self.args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )
        # Read stderr as it comes: a server that logs more than a pipe holds (64 KiB) would block on its next line.
        self._stderr_reader = threading.Thread(target=self._drain_stderr, args=(self.process,), daemon=True)
        self._stderr_reader.start()
        line = _first_line(self.process, timeout)
        if not line.startswith("ferry ready "):
            stderr = self.stop()
            raise RuntimeError(f"ferry serve did not become ready: {line!r}\n{stderr}")
        self.ready_line = line.strip()
        fields = dict(part.split("=", 1) for part in self.ready_line.split()[2:])
        self.grpc_address = fields["grpc"]
        self.cdn_url = fields.get("cdn", "")
        self.metrics_url = fields.get("metrics", "")
        return self

    def client(self, **kwargs: Any) -> Client:
        return Client(self.grpc_address, **kwargs)

    def signal(self, signum: int) -> None:
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    def wait(self, timeout: float | None = 30) -> int:
        assert self.process is not None, "not started"
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30) -> str:
        """SIGTERM (drain), kill if it outlasts `timeout`; returns what the server wrote to stderr.

        Safe to call again: later calls return the same stderr.
        """
        if self.process is None or (self.process.stderr is not None and self.process.stderr.closed):
            return self.stderr
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._stderr_reader is not None:
            self._stderr_reader.join(timeout)
        self.stderr = "".join(self._stderr_lines)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
        return self.stderr

    def _drain_stderr(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self._stderr_lines.append(line)

    def __enter__(self) -> StackProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, or "" if the process exits or `timeout` passes first."""
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(process.stdout.readline() if process.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""
