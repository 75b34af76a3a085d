"""Peer benchmark: the image→image model served by Ferry, cog, LitServe and BentoML, side by side, same run.

    .venv/bin/python bench/peers.py [--quick] [--requests 40] [--warmup 3] [--clients 8,32]
                                    [--per-client 4] [--peers cog,litserve,bentoml]

`make bench` builds each peer's virtualenv (bench/.peers/NAME: the peer pinned, torch==2.13.0, and
Ferry without its extras, so the peer imports the Upscaler's own torch code) and runs this.

The same model everywhere: `ferry.inference.apps.upscale`'s `load_image` → `upscale_tensor` →
`to_pixels` → a png at compress_level 1 (Ferry's encoder default), on a 512×512 png fetched by URL
from one local HTTP server (scripts/http_source.py, its own process), ×2 → 1024×1024. Every server
runs the model one call at a time (the Upscaler's max_concurrency = 1); around it each does what its
idiom does:

- **ferry**: `ferry serve --app ferry.inference.apps.upscale:Upscaler`; `client.run("upscaler", …)`
  (gRPC); the stack downloads the URL, runs the app, encodes the png, stores it (fsync) on its CDN and
  answers with the URL.
- **cog**: coglet (`python -m cog.server.http`) serving bench/peers/cog_predict.py; POST /predictions;
  coglet downloads the `Path` input, and PUTs the returned file to `--upload-url`
  (bench/peers/upload_server.py, which stores it with fsync) and answers with its URL.
- **litserve**: bench/peers/litserve_server.py; POST /predict with the URL; the png is the response body.
- **bentoml**: `bentoml serve` of bench/peers/bentoml_service.py; POST /upscale with the URL; the png
  (a returned `Path`) is the response body.

Each HTTP client thread keeps one connection alive, as a Ferry `Client` keeps its channel. All four
servers stay up for the whole run; sequential requests alternate server by server (the order rotating
each round) and the concurrent runs alternate run by run, so background load falls on all alike.
Before timing, one output of each server is decoded and compared pixel for pixel with the model run
in this process. Server CPU and memory are read from /proc for each server's whole process tree (cog's
with its upload server's, which stores cog's outputs as Ferry stores its own).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from ferry.client import Client
from ferry.testing import StackProcess
from inference import SCALE, SIZE, InProcess, hammer, percentile_ms, photo_like

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "bench" / "peers"
VENVS = ROOT / "bench" / ".peers"
HTTP_SOURCE = ROOT / "scripts" / "http_source.py"
APP = "ferry.inference.apps.upscale:Upscaler"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# The distributions whose versions the report names, per server.
VERSIONS = {
    "ferry": ["ferry-media", "grpcio", "torch"],
    "cog": ["cog", "coglet", "torch"],
    "litserve": ["litserve", "fastapi", "uvicorn", "torch"],
    "bentoml": ["bentoml", "starlette", "uvicorn", "torch"],
}


# --- a server's process tree, read from /proc -------------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it, now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def server_pids(server: Server) -> list[int]:
    return [pid for root in (server.root_pid, *server.helper_pids) for pid in process_tree(root)]


def cpu_seconds(server: Server) -> float:
    """User + system CPU of the server's trees, counting the children they have already reaped."""
    total = 0
    for pid in server_pids(server):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def memory_mib(server: Server) -> tuple[float, float]:
    """RSS summed over the server's trees (shared pages once per process) and PSS (shared pages split): MiB."""
    rss = pss = 0
    for pid in server_pids(server):
        with contextlib.suppress(OSError):
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
    return rss / (1 << 20), pss / (1 << 20)


# --- the four servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def started(command: list[str], cwd: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    """A helper process that prints `port N` once listening."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=cwd)
    assert process.stdout is not None
    return process, int(process.stdout.readline().split()[1])


class KeepAlive:
    """One HTTP/1.1 connection, reopened if the server closed it: what each client thread holds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def post_json(self, path: str, body: dict[str, object]) -> tuple[int, str, bytes]:
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                self.connection.request("POST", path, payload, headers)
                response = self.connection.getresponse()
                return response.status, response.getheader("Content-Type") or "", response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()  # an idle keep-alive the server dropped: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()


@dataclass
class Server:
    """One way of serving the model: how to start it, one client's request, and its output's pixels."""

    name: str
    root_pid: int = 0
    helper_pids: list[int] = field(default_factory=list)  # processes doing its work outside its own tree
    versions: str = ""
    stop: Callable[[], str] = field(default=lambda: "")

    def start(self) -> None:
        raise NotImplementedError

    def client(self) -> Callable[[], bytes | str]:
        """A request function for one client thread: returns the output (png bytes or a URL)."""
        raise NotImplementedError

    def close_clients(self) -> None:
        return None


def output_pixels(output: bytes | str) -> np.ndarray:
    if isinstance(output, str):
        with urllib.request.urlopen(output) as response:
            output = response.read()
    return np.array(Image.open(io.BytesIO(output)))


class FerryServer(Server):
    def __init__(self, work: Path, url: str) -> None:
        super().__init__("ferry")
        self.arguments: dict[str, object] = {"image_url": url, "scale": SCALE}
        self.stack = StackProcess(
            ["--app", APP, "--data-dir", str(work / "ferry-data"), "--allow-hosts", "127.0.0.1/32"]
        )
        self.opened: list[Client] = []

    def start(self) -> None:
        self.stack.start()
        assert self.stack.process is not None
        self.root_pid = self.stack.process.pid
        self.stop = self.stack.stop

    def client(self) -> Callable[[], bytes | str]:
        own = self.stack.client()
        self.opened.append(own)

        def request() -> str:
            url: str = own.run("upscaler", self.arguments)["image"]["url"]
            return url

        return request

    def close_clients(self) -> None:
        for own in self.opened:
            own.close()
        self.opened.clear()


class HttpPeer(Server):
    """A peer started from its own virtualenv, answering JSON POSTs on a port of its own."""

    def __init__(self, name: str, work: Path, url: str, path: str, body: dict[str, object]) -> None:
        super().__init__(name)
        self.venv = VENVS / name
        # Everything the peer writes (its inputs, outputs, BentoML's home) goes under the run's folder,
        # removed at the end.
        self.temp = work / name
        self.temp.mkdir()
        self.port = free_port()
        self.path, self.body, self.url = path, body, url
        self.connections: list[KeepAlive] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (the server writes to it until stop() reads it back)

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        command, env = self.command()
        # The venv's bin first on PATH: coglet and bentoml start helpers of their own by name.
        env = {
            **os.environ,
            "PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(self.temp),
            **env,
        }
        # A session of its own: stop() ends the whole tree it spawns, by its group id.
        self.process = subprocess.Popen(
            command, cwd=PEERS_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.root_pid = self.process.pid
        self.stop = self._stop

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        probe = KeepAlive(self.port)
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                status, _, _ = probe.post_json(self.path, self.body)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self._log_tail()}")
            probe.close()
            time.sleep(1)

    def client(self) -> Callable[[], bytes | str]:
        connection = KeepAlive(self.port)
        self.connections.append(connection)

        def request() -> bytes | str:
            status, content_type, body = connection.post_json(self.path, self.body)
            if status != 200:
                raise RuntimeError(f"{self.name} answered {status}: {body[:200]!r}")
            return self.output(content_type, body)

        return request

    def output(self, content_type: str, body: bytes) -> bytes | str:
        if content_type != "image/png":
            raise RuntimeError(f"{self.name} answered {content_type}: {body[:200]!r}")
        return body

    def close_clients(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections.clear()

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def _stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self._log_tail()


class CogPeer(HttpPeer):
    def __init__(self, work: Path, url: str, upload_port: int, upload_pid: int, slots: int) -> None:
        super().__init__("cog", work, url, "/predictions", {"input": {"image": url, "scale": SCALE}})
        self.helper_pids = [upload_pid]
        self.slots = slots  # one per client at the most clients: beyond its slots cog answers 409
        self.upload_url = f"http://127.0.0.1:{upload_port}/"

    def command(self) -> tuple[list[str], dict[str, str]]:
        python = str(self.venv / "bin" / "python")
        env = {
            "COG_PREDICT_TYPE_STUB": "cog_predict.py:Predictor",
            "COG_MAX_CONCURRENCY": str(self.slots),
            "PORT": str(self.port),
        }
        return [python, "-m", "cog.server.http", "--host", "127.0.0.1", "--upload-url", self.upload_url], env

    def output(self, content_type: str, body: bytes) -> bytes | str:
        answer = json.loads(body)
        if answer.get("status") != "succeeded" or not isinstance(answer.get("output"), str):
            raise RuntimeError(f"cog answered {str(answer)[:200]}")
        url: str = answer["output"]
        return url


class LitServePeer(HttpPeer):
    def __init__(self, work: Path, url: str) -> None:
        super().__init__("litserve", work, url, "/predict", {"image_url": url, "scale": SCALE})

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [str(self.venv / "bin" / "python"), "litserve_server.py", str(self.port)], {}


class BentoMLPeer(HttpPeer):
    def __init__(self, work: Path, url: str) -> None:
        super().__init__("bentoml", work, url, "/upscale", {"image_url": url, "scale": SCALE})

    def command(self) -> tuple[list[str], dict[str, str]]:
        bentoml = str(self.venv / "bin" / "bentoml")
        # BENTOML_HOME under the run's folder: nothing written to the user's ~/bentoml.
        home = {"BENTOML_HOME": str(self.temp / "home"), "BENTOML_DO_NOT_TRACK": "True"}
        return [bentoml, "serve", "bentoml_service:Upscaler", "--host", "127.0.0.1", "--port", str(self.port)], home


def versions(server: Server) -> str:
    if isinstance(server, HttpPeer):
        script = "import importlib.metadata as m, sys; print(' '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
        command = [str(server.venv / "bin" / "python"), "-c", script, *VERSIONS[server.name]]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    return " ".join(f"{name} {metadata.version(name)}" for name in VERSIONS[server.name])


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Figures:
    sequential: list[float] = field(default_factory=list)
    sequential_cpu: float = 0.0
    concurrent: dict[int, tuple[float, list[float], int, float]] = field(default_factory=dict)  # rate, lat, errs, cpu
    errors: list[str] = field(default_factory=list)
    idle_cpu: float = 0.0
    memory: tuple[float, float] = (0.0, 0.0)


def sequential_rounds(servers: list[Server], figures: dict[str, Figures], requests: int, warmup: int) -> None:
    requesters = {server.name: server.client() for server in servers}
    for _ in range(warmup):
        for server in servers:
            requesters[server.name]()
    for turn in range(requests):
        # The order rotates each round: no server always follows the same one's work.
        for server in servers[turn % len(servers) :] + servers[: turn % len(servers)]:
            cpu = cpu_seconds(server)
            began = time.perf_counter()
            try:
                requesters[server.name]()
                figures[server.name].sequential.append(time.perf_counter() - began)
            except Exception as error:  # noqa: BLE001 (counted, never raised: the run reports how many failed)
                figures[server.name].errors.append(f"{type(error).__name__}: {error}"[:300])
            figures[server.name].sequential_cpu += cpu_seconds(server) - cpu
    for server in servers:
        server.close_clients()


def concurrent_runs(servers: list[Server], figures: dict[str, Figures], clients: int, total: int) -> None:
    for server in servers:
        cpu = cpu_seconds(server)
        wall, latencies, errors = hammer(clients, total, lambda _, server=server: server.client())
        used = cpu_seconds(server) - cpu
        server.close_clients()
        figures[server.name].concurrent[clients] = (len(latencies) / wall, latencies, len(errors), used)
        figures[server.name].errors.extend(error[:300] for error in errors)


def same_pixels(servers: list[Server], expected: np.ndarray) -> dict[str, int]:
    """Each server's output decoded, against the in-process model's pixels: max abs difference."""
    differences = {}
    for server in servers:
        served = output_pixels(server.client()())
        server.close_clients()
        if served.shape != expected.shape:
            raise RuntimeError(f"{server.name}'s output is {served.shape}, the model's {expected.shape}")
        differences[server.name] = int(np.abs(served.astype(np.int16) - expected.astype(np.int16)).max())
    return differences


# --- the report ---------------------------------------------------------------------------------


def report(servers: list[Server], figures: dict[str, Figures], levels: list[int]) -> None:
    print()
    header = f"{'server':<9} {'p50 1c':>9} {'p99 1c':>9}"
    for clients in levels:
        header += f" {f'req/s {clients}c':>10} {f'p99 {clients}c':>9}"
    header += f" {'errors':>6} {'RSS MiB':>8} {'PSS MiB':>8} {'CPU s/req 1c':>12}"
    header += "".join(f" {f'CPU/req {c}c':>11}" for c in levels) + f" {'idle CPU %':>10}"
    print(header)
    for server in servers:
        f = figures[server.name]
        row = f"{server.name:<9} {ms(f.sequential, 50):>9} {ms(f.sequential, 99):>9}"
        for clients in levels:
            rate, latencies, _, _ = f.concurrent[clients]
            row += f" {rate:>10.2f} {ms(latencies, 99):>9}"
        sequential_count = max(len(f.sequential), 1)
        row += (
            f" {len(f.errors):>6} {f.memory[0]:>8.0f} {f.memory[1]:>8.0f} {f.sequential_cpu / sequential_count:>12.3f}"
        )
        for clients in levels:
            rate, latencies, _, used = f.concurrent[clients]
            row += f" {used / max(len(latencies), 1):>11.3f}"
        row += f" {f.idle_cpu * 100:>10.1f}"
        print(row, flush=True)
    ferry = figures["ferry"]
    top = max(levels)
    print(f"\nferry's ratio to each peer (p50: ≤ 1.0 is the goal; req/s at {top} clients: ≥ 1.0 is the goal)")
    for server in servers[1:]:
        peer = figures[server.name]
        p50 = percentile_ms(ferry.sequential, 50) / percentile_ms(peer.sequential, 50)
        rates = "   ".join(f"req/s {c}c {ferry.concurrent[c][0] / peer.concurrent[c][0]:6.3f}" for c in levels)
        verdict = "met" if p50 <= 1.0 and ferry.concurrent[top][0] >= peer.concurrent[top][0] else "NOT met"
        print(f"  vs {server.name:<9} p50 {p50:6.3f}   {rates}   goals {verdict}", flush=True)


def ms(seconds: list[float], q: float) -> str:
    return f"{percentile_ms(seconds, q):.0f} ms" if seconds else "n/a"


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            log = server.stop()
            if errors := [line for line in log.splitlines() if "Traceback" in line or "ERROR" in line]:
                print(f"{server.name}'s log has {len(errors)} error lines; its tail:\n{log[-1500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per server for p50/p99")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per server first")
    parser.add_argument("--clients", default="8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client at each concurrency level")
    parser.add_argument("--peers", default="cog,litserve,bentoml", help="which peers to run beside ferry")
    parser.add_argument("--quick", action="store_true", help="8 sequential requests, 1 warm-up, 2 per client")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warmup, args.per_client = 8, 1, 2
    levels = [int(level) for level in args.clients.split(",")]
    wanted = [name for name in args.peers.split(",") if name]
    missing = [name for name in wanted if not (VENVS / name / "bin" / "python").exists()]
    if missing:
        print(f"no virtualenv for {', '.join(missing)} under {VENVS}: `make bench` builds them", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-peers-"))
    for folder in ("source", "uploads"):
        (work / folder).mkdir()
    source_png = work / "source" / "input.png"
    Image.fromarray(photo_like(SIZE)).save(source_png)
    expected = InProcess(source_png, work).pixels()
    helpers: list[subprocess.Popen[str]] = []
    failures = 0
    try:
        source, source_port = started([sys.executable, str(HTTP_SOURCE), str(work / "source")])
        uploads, upload_port = started([sys.executable, str(PEERS_DIR / "upload_server.py"), str(work / "uploads")])
        helpers += [source, uploads]
        url = f"http://127.0.0.1:{source_port}/{source_png.name}"
        peers: dict[str, HttpPeer] = {
            # cog's outputs are stored by the upload server, as Ferry's are by Ferry: its CPU and memory count as cog's.
            "cog": CogPeer(work, url, upload_port, uploads.pid, max(levels)),
            "litserve": LitServePeer(work, url),
            "bentoml": BentoMLPeer(work, url),
        }
        servers: list[Server] = [FerryServer(work, url), *(peers[name] for name in wanted)]
        with running(servers):
            for server in servers:
                server.start()
            for server in servers:
                if isinstance(server, HttpPeer):
                    server.wait_ready()
                server.versions = versions(server)
            load = os.getloadavg()
            print(
                f"input {SIZE}x{SIZE} png ({source_png.stat().st_size / (1 << 20):.2f} MiB) from {url}, "
                f"x{SCALE} -> {SIZE * SCALE}x{SIZE * SCALE} png; {os.cpu_count()} CPUs, "
                f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before the run",
                flush=True,
            )
            for server in servers:
                print(f"  {server.name:<9} {server.versions}", flush=True)
            differences = same_pixels(servers, expected)
            print(
                "output vs the in-process model, max abs pixel difference: "
                + ", ".join(f"{name} {value}" for name, value in differences.items()),
                flush=True,
            )
            figures = {server.name: Figures() for server in servers}
            # What each server burns doing nothing while the others work: all of them are up all run.
            idle_from = {server.name: cpu_seconds(server) for server in servers}
            time.sleep(3)
            for server in servers:
                figures[server.name].idle_cpu = (cpu_seconds(server) - idle_from[server.name]) / 3

            sequential_rounds(servers, figures, args.requests, args.warmup)
            print(
                f"sequential: {args.requests} requests per server, alternating, after {args.warmup} warm-up", flush=True
            )
            for clients in levels:
                concurrent_runs(servers, figures, clients, clients * args.per_client)
                print(
                    f"concurrent: {clients} clients share {clients * args.per_client} requests, server by server",
                    flush=True,
                )
            for server in servers:
                figures[server.name].memory = memory_mib(server)
            load = os.getloadavg()
            print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} after the run", flush=True)
            report(servers, figures, levels)
            for server in servers:
                failures += len(figures[server.name].errors)
                for error in sorted(set(figures[server.name].errors))[:3]:
                    print(f"   {server.name} error: {error}", flush=True)
            if any(differences.values()):
                print("FAILED: a server's output differs from the in-process model's", file=sys.stderr)
                failures += 1
    finally:
        for helper in helpers:
            helper.terminate()
            helper.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
