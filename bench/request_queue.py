"""Queue benchmark: what the shared request queue costs a request, and what it buys, in one run.

    .venv/bin/python bench/queue.py [--quick] [--sequential 300] [--concurrent 1280] [--rounds 10]
                                    [--drain 300] [--reclaims 5] [--lease 2]

1. submit→start latency (p50, p99) and completed requests/s of a no-op app
   (bench/apps/queue_apps.py:NoOp, async, max_concurrency 32) at 1 and at 32
   concurrent clients, each `ferry serve --app` in its own process: on the
   embedded SQLite queue (the default) and on Redis (`--queue redis://…`).
   A client notes time.time() just before Submit, then waits with
   GetResult(wait=True) (the Submit + GetResult path); the handler returns
   time.time() as it began. Both clocks are this machine's.
2. The baseline, in the same run: the runner before the queue (commit
   ba4bfa5, requests in process memory), served from that commit's tree with
   the same app and the same clients. The three servers run side by side and
   take turns, batch by batch, so background load falls on all of them.
3. Drain: 300 requests of an app whose handler sleeps 50 ms in a worker thread
   (Sleeper, max_concurrency 1: GPU time) are submitted to one replica, with
   1 and then 3 replicas (`ferry serve` processes) sharing one Redis queue;
   the time from the first Submit until every result is in.
4. Reclaim: a replica running a request is killed (SIGKILL) just after its
   handler began (just after its lease was set: the longest wait for it to
   lapse); the time until the handler begins again on another replica (lease
   --lease seconds; each trial submits at a random moment; the killed replica
   is restarted between trials).

Redis is a real redis-server on a free loopback port with AOF on,
`appendfsync everysec`: like SQLite's WAL with synchronous=NORMAL, it survives a crash of the
process, and a power cut may lose the last second.
Prints one line per case (ferry's figure, the baseline's, the ratio), then the
issue's goals and whether each was met.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository, for tests/redis_server.py

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import redis

from ferry.client import AsyncClient
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2, inference_pb2_grpc
from tests.redis_server import RedisServer

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps" / "queue_apps.py"
NOOP, SLEEPER = f"{APPS}:NoOp", f"{APPS}:Sleeper"
BASELINE_COMMIT = "ba4bfa5"  # the last commit whose runner kept its requests in process memory
BASELINE = f"in-memory runner ({BASELINE_COMMIT})"
SLEEP_SECONDS = 0.05
REDIS_P50_GOAL_MS = 2.0
DRAIN_SPEEDUP_GOAL = 2.7
RECLAIM_GRACE_SECONDS = 1.0  # the goal: a dead replica's request runs elsewhere within lease + this

if TYPE_CHECKING:  # the async stub exists in the generated .pyi only
    Stub = inference_pb2_grpc.InferenceServiceAsyncStub


def line(case: str, ferry: str, baseline_name: str, baseline: str, ratio: float | None, note: str) -> None:
    shown = f"{ratio:6.3f}" if ratio is not None else "   n/a"
    print(f"{case:<40} ferry {ferry:>12}   {baseline_name:<28} {baseline:>12}   ratio {shown}   ({note})", flush=True)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000


# -- the servers -------------------------------------------------------------------------


def baseline_site(work: Path) -> Path:
    """A folder whose `ferry` package is commit BASELINE_COMMIT's tree, laid out as pyproject's package-dir
    maps it (ferry = sdk/, ferry.services = services/, ferry.inference = inference/); for PYTHONPATH.

    `git archive`, not a worktree: nothing is registered in this repository, so an interrupted run leaves
    nothing behind but its temp folder.
    """
    tree, site = work / "baseline-tree", work / "baseline-site"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", BASELINE_COMMIT, "sdk", "services", "inference"],
        check=True,
        stdout=subprocess.PIPE,  # git's complaint (a clone without that commit) reaches the terminal
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    site.mkdir()
    (tree / "sdk").rename(site / "ferry")
    (tree / "services").rename(site / "ferry" / "services")
    (tree / "inference").rename(site / "ferry" / "inference")
    # The venv's editable install of this tree must not win: check which runner a server there imports.
    found = subprocess.run(
        [sys.executable, "-c", "import ferry.inference.runner as r; print(r.__file__, hasattr(r, 'RequestRecord'))"],
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not (found[0].startswith(str(site)) and found[1] == "True"):
        raise RuntimeError(f"the baseline's ferry resolves to {found[0]}, not {site}'s in-memory runner")
    return site


def start_redis() -> RedisServer:
    server = RedisServer().start()
    with redis.Redis(port=server.port) as admin:
        admin.config_set("appendfsync", "everysec")
        admin.config_set("appendonly", "yes")
    return server


def redis_url(server: RedisServer, db: int) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def serve(work: Path, name: str, app: str, *extra: str, env: dict[str, str] | None = None) -> StackProcess:
    return StackProcess(["--app", app, "--data-dir", str(work / name), *extra], env).start()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU use in percent of one core over `seconds` of nothing asked of it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: (cpu_seconds(pid) - before[name]) / seconds * 100 for name, pid in pids.items()}


def pid_of(stack: StackProcess) -> int:
    assert stack.process is not None, "not started"
    return stack.process.pid


# -- 1 and 2: submit→start latency ----------------------------------------------------------


async def submit_to_start(stub: Stub) -> float:
    """Seconds from just before Submit to the no-op handler's start (its own time.time())."""
    submitted = time.time()
    reply = await stub.Submit(inference_pb2.SubmitRequest(app_id="noop", input_json="{}"))
    result = await stub.GetResult(inference_pb2.GetResultRequest(request_id=reply.request_id, wait=True))
    started: float = json.loads(result.output_json)["started"]
    return started - submitted


async def batch(stub: Stub, clients: int, total: int) -> tuple[list[float], float]:
    """`clients` concurrent callers share `total` requests: each one's submit→start, and the wall seconds."""
    left = total
    latencies: list[float] = []

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            latencies.append(await submit_to_start(stub))

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return latencies, time.perf_counter() - began


@dataclass
class Measured:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


async def latency_case(stubs: dict[str, Stub], clients: int, total: int, rounds: int) -> dict[str, Measured]:
    """Every server's figures at `clients` concurrent callers, their batches taking turns (the order rotating
    each round), after an untimed warm-up batch each."""
    for stub in stubs.values():
        await batch(stub, clients, clients * 2)
    measured = {name: Measured() for name in stubs}
    names = list(stubs)
    per_round = max(clients, total // rounds)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            latencies, wall = await batch(stubs[name], clients, per_round)
            measured[name].latencies += latencies
            measured[name].wall += wall
    return measured


def report_latency(measured: dict[str, Measured], clients: int, rounds: int) -> dict[str, float]:
    """Prints the case's lines; returns each queue's p50 over the baseline's, in ms."""
    base = measured[BASELINE]
    count = len(base.latencies)
    who = "1 client" if clients == 1 else f"{clients} clients"
    print(f"{who}: {count} requests per server in {rounds} alternating batches", flush=True)
    added: dict[str, float] = {}
    for name in ("SQLite", "Redis"):
        ours = measured[name]
        for q in (50, 99):
            f, b = percentile_ms(ours.latencies, q), percentile_ms(base.latencies, q)
            if q == 50:
                added[name] = f - b
            line(
                f"submit→start p{q}, {who} [{name}]", f"{f:.2f} ms", BASELINE, f"{b:.2f} ms", f / b, f"{f - b:+.2f} ms"
            )
        line(
            f"completed/s, {who} [{name}]",
            f"{ours.rate:.0f} req/s",
            BASELINE,
            f"{base.rate:.0f} req/s",
            ours.rate / base.rate,
            "Submit + GetResult(wait)",
        )
    return added


async def latency_cases(work: Path, redis_server: RedisServer, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """Parts 1 and 2; each queue's added p50 by client count."""
    site = baseline_site(work)
    stacks = {
        BASELINE: serve(work, "baseline", NOOP, env={"PYTHONPATH": str(site)}),
        "SQLite": serve(work, "sqlite", NOOP),
        "Redis": serve(work, "redis", NOOP, "--queue", redis_url(redis_server, 0)),
    }
    clients = {name: AsyncClient(stack.grpc_address) for name, stack in stacks.items()}
    try:
        stubs = {name: client.inference for name, client in clients.items()}
        await batch(stubs[BASELINE], 1, 5)  # each answers before the idle clock starts
        await batch(stubs["SQLite"], 1, 5)
        await batch(stubs["Redis"], 1, 5)
        pids = {name: pid_of(stack) for name, stack in stacks.items()}
        with redis.Redis(port=redis_server.port) as admin:
            pids["redis-server"] = int(admin.info("server")["process_id"])
        idle = idle_cpu(pids, 3.0)
        idle_line = ", ".join(f"{name} {percent:.1f}%" for name, percent in idle.items())
        print(f"idle CPU (% of a core, 3 s, 32 free slots each): {idle_line}", flush=True)
        return {
            1: report_latency(await latency_case(stubs, 1, args.sequential, args.rounds), 1, args.rounds),
            32: report_latency(await latency_case(stubs, 32, args.concurrent, args.rounds), 32, args.rounds),
        }
    finally:
        for client in clients.values():
            await client.close()
        for stack in stacks.values():
            stack.stop()


# -- 3: draining with 1 and 3 replicas ------------------------------------------------------


async def drain(stub: Stub, count: int) -> tuple[float, Counter[int]]:
    """Submit `count` sleeping requests, then wait for each: wall seconds from the first Submit, and how many
    each replica (pid) ran."""
    arguments = json.dumps({"seconds": SLEEP_SECONDS})
    began = time.perf_counter()
    ids = []
    for _ in range(count):
        reply = await stub.Submit(inference_pb2.SubmitRequest(app_id="sleeper", input_json=arguments))
        ids.append(reply.request_id)
    ran: Counter[int] = Counter()
    for request_id in ids:
        result = await stub.GetResult(inference_pb2.GetResultRequest(request_id=request_id, wait=True))
        ran[json.loads(result.output_json)["pid"]] += 1
    return time.perf_counter() - began, ran


async def drain_cases(replicas: list[StackProcess], start_replica: Callable[[], StackProcess], count: int) -> float:
    """Part 3 (replicas[0] is running; two more are started); the speed-up of 3 replicas over 1."""
    ideal = count * SLEEP_SECONDS
    walls: dict[int, float] = {}
    for replica_count in (1, 3):
        while len(replicas) < replica_count:
            replicas.append(start_replica())
        async with AsyncClient(replicas[0].grpc_address) as client:
            await drain(client.inference, 3 * replica_count)  # warm-up
            wall, ran = await drain(client.inference, count)
        walls[replica_count] = wall
        split = "/".join(str(n) for n in sorted(ran.values(), reverse=True))
        line(
            f"drain {count} × 50 ms, {replica_count} replica{'s' if replica_count > 1 else ''} [Redis]",
            f"{wall:.2f} s",
            f"the handlers' sleep / {replica_count}",
            f"{ideal / replica_count:.2f} s",
            wall / (ideal / replica_count),
            f"{count / wall:.1f} req/s; ran per replica {split}",
        )
    speedup = walls[1] / walls[3]
    print(f"3 replicas drain {speedup:.2f}× faster than 1 (goal ≥ {DRAIN_SPEEDUP_GOAL}×)", flush=True)
    return speedup


# -- 4: reclaiming a dead replica's request -------------------------------------------------


def starts_in(path: Path) -> list[tuple[int, float]]:
    """The (pid, time) of each handler start the sleeper wrote to `path`."""
    if not path.exists():
        return []
    lines = [entry.split() for entry in path.read_text().splitlines()]
    return [(int(pid), float(when)) for pid, when in lines]


def wait_for_start(path: Path, count: int, timeout: float = 60.0) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    while len(found := starts_in(path)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sleeper did not start a {count}th time within {timeout:g} s")
        time.sleep(0.005)
    return found[count - 1]


def reclaim_cases(
    work: Path, replicas: list[StackProcess], start_replica: Callable[[], StackProcess], trials: int, lease: float
) -> list[float]:
    """Part 4: for each trial, seconds from the SIGKILL to the handler's start on another replica."""
    reclaims: list[float] = []
    phases = random.Random(0)
    for trial in range(trials):
        # Survivors look for lapsed leases once a second, from when each last blocked waiting for work: a
        # submit at a random moment puts those looks at a random phase to the lapse, not at one this loop set.
        time.sleep(phases.uniform(0, 1))
        starts = work / f"starts-{trial}"
        arguments = json.dumps({"seconds": 600, "starts": str(starts)})
        with replicas[0].client() as client:
            request_id = client.inference.Submit(
                inference_pb2.SubmitRequest(app_id="sleeper", input_json=arguments)
            ).request_id
        first_pid, _ = wait_for_start(starts, 1)
        victim = next(index for index, replica in enumerate(replicas) if pid_of(replica) == first_pid)
        process = replicas[victim].process
        assert process is not None
        killed_at = time.time()
        process.kill()
        process.wait()
        replicas[victim].stop()  # collects its pipes
        second_pid, started_again = wait_for_start(starts, 2)
        reclaims.append(started_again - killed_at)
        survivor = next(replica for replica in replicas if pid_of(replica) == second_pid)
        with survivor.client() as client:
            client.inference.Cancel(inference_pb2.CancelRequest(request_id=request_id))
        replicas[victim] = start_replica()
    worst, middle = max(reclaims), float(np.median(reclaims))
    line(
        f"reclaim after SIGKILL, lease {lease:g} s [Redis]",
        f"{worst:.2f} s",
        "lease + 1 s (the goal)",
        f"{lease + RECLAIM_GRACE_SECONDS:.2f} s",
        worst / (lease + RECLAIM_GRACE_SECONDS),
        f"worst of {trials}; median {middle:.2f} s; each: {', '.join(f'{r:.2f}' for r in reclaims)}",
    )
    return reclaims


def replica_cases(work: Path, redis_server: RedisServer, args: argparse.Namespace) -> tuple[float, list[float]]:
    """Parts 3 and 4, on one set of sleeper replicas sharing a Redis queue."""
    url = redis_url(redis_server, 1)
    started = 0

    def start_replica() -> StackProcess:
        nonlocal started
        started += 1
        return serve(work, f"replica-{started}", SLEEPER, "--queue", url, "--lease-seconds", f"{args.lease:g}")

    replicas = [start_replica()]
    try:
        speedup = asyncio.run(drain_cases(replicas, start_replica, args.drain))
        reclaims = reclaim_cases(work, replicas, start_replica, args.reclaims, args.lease)
    finally:
        for replica in replicas:
            replica.stop()
    return speedup, reclaims


# -- the whole run ----------------------------------------------------------------------


def machine() -> str:
    model = next(
        (
            entry.split(":", 1)[1].strip()
            for entry in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in entry
        ),
        platform.processor(),
    )
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, redis-server {redis_version[2:]}, "
        f"load average {load} at the start"
    )


def goals(added: dict[int, dict[str, float]], speedup: float, reclaims: list[float], lease: float) -> None:
    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows = [
        (
            f"Redis adds ≤ {REDIS_P50_GOAL_MS:g} ms p50 submit→start over {BASELINE}, 1 client",
            f"{added[1]['Redis']:+.2f} ms",
            met(added[1]["Redis"] <= REDIS_P50_GOAL_MS),
        ),
        ("  (shown, no goal) Redis's added p50, 32 clients", f"{added[32]['Redis']:+.2f} ms", ""),
        ("  (shown, no goal) SQLite's added p50, 1 client", f"{added[1]['SQLite']:+.2f} ms", ""),
        ("  (shown, no goal) SQLite's added p50, 32 clients", f"{added[32]['SQLite']:+.2f} ms", ""),
        (
            f"3 replicas drain the 50 ms app's queue ≥ {DRAIN_SPEEDUP_GOAL:g}× faster than 1",
            f"{speedup:.2f}×",
            met(speedup >= DRAIN_SPEEDUP_GOAL),
        ),
        (
            f"a dead replica's request runs elsewhere ≤ lease + 1 s ({lease + RECLAIM_GRACE_SECONDS:g} s), worst",
            f"{max(reclaims):.2f} s",
            met(max(reclaims) <= lease + RECLAIM_GRACE_SECONDS),
        ),
    ]
    print("\ngoals (issue 14):", flush=True)
    for goal, figure, verdict in rows:
        print(f"  {goal:<84} {figure:>10}   {verdict}".rstrip(), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="60 requests at 1 client, 320 at 32, 60 to drain, 2 reclaims"
    )
    parser.add_argument("--sequential", type=int, default=300, help="requests per server at 1 client")
    parser.add_argument("--concurrent", type=int, default=1280, help="requests per server at 32 clients")
    parser.add_argument("--rounds", type=int, default=10, help="alternating batches per server and client count")
    parser.add_argument("--drain", type=int, default=300, help="sleeping requests to drain")
    parser.add_argument("--reclaims", type=int, default=5, help="replicas killed, one per trial")
    parser.add_argument("--lease", type=float, default=2.0, help="the replicas' --lease-seconds")
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.concurrent, args.drain, args.reclaims = 60, 320, 60, 2

    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}", flush=True)
    print(f"machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-queue-"))
    redis_server = start_redis()
    try:
        added = asyncio.run(latency_cases(work, redis_server, args))
        speedup, reclaims = replica_cases(work, redis_server, args)
    finally:
        redis_server.close()
        shutil.rmtree(work, ignore_errors=True)
    goals(added, speedup, reclaims, args.lease)
    return 0


if __name__ == "__main__":
    sys.exit(main())
