"""The scale-out drill: separate processes form one system, and losing a replica of each kind loses no request.

Three `ferry serve inference` replicas share one real redis-server queue; two
`ferry serve encoder` replicas store into one bucket of moto's S3 server (over
HTTP). Sixty requests are submitted round-robin across the inference replicas;
mid-run one inference replica is killed with -9 while its handler runs, and one
encoder is stopped with SIGTERM. Every request completes, once as its callers
see it; the handlers' own run log (fsynced, so a kill cannot lose a line) shows
that only the killed replica's in-flight requests ran a second time, and the
bucket holds no output beyond those re-runs.

Each inference replica is given both encoders (`--encoder A --encoder B`: its
handlers' encodes fail over in that order), in a different order per replica so
that both encoders serve before one is stopped.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import numpy as np
import pytest
from PIL import Image as PILImage

from ferry.testing import StackProcess
from ferry.v1 import inference_pb2
from tests.conftest import AWS_TEST_CREDENTIALS
from tests.e2e.drill_app import RUN_LOG, pixels
from tests.e2e.test_storage_stack import fetch
from tests.harness import wait_for
from tests.redis_server import RedisServer

APP = f"{Path(__file__).parent / 'drill_app.py'}:DrillApp"
REQUESTS = 60
# Short, so the killed replica's request is taken again soon; renewed every third of it, so a live replica keeps it.
LEASE_SECONDS = "2"
# Encodes in flight when the encoder is stopped finish within this; new ones go to the other encoder.
ENCODER_DRAIN_SECONDS = "5"
RESULT_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Run:
    """One line of the drill app's run log."""

    what: str  # start, held or end
    request_id: str
    key: int
    pid: int


@dataclass(frozen=True)
class Drill:
    encoders: list[StackProcess]
    replicas: list[StackProcess]  # inference; replicas 0 and 2 encode on encoders[0] first, replica 1 on encoders[1]
    drill_dir: Path  # the run log and the hold files
    bucket: str
    s3_endpoint: str

    def runs(self, what: str | None = None) -> list[Run]:
        path = self.drill_dir / RUN_LOG
        lines = path.read_text().splitlines() if path.exists() else []
        runs = [Run(kind, request_id, int(key), int(pid)) for kind, request_id, key, pid in map(str.split, lines)]
        return [run for run in runs if what is None or run.what == what]

    def submit(self, replica: StackProcess, key: int) -> str:
        arguments = json.dumps({"key": key, "drill_dir": str(self.drill_dir)})
        with replica.client() as client:
            request = inference_pb2.SubmitRequest(app_id="drill", input_json=arguments)
            return str(client.inference.Submit(request).request_id)

    def stored_keys(self) -> list[str]:
        pages = s3_client(self.s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def result(replica: StackProcess, request_id: str) -> str:
    with replica.client() as client:
        request = inference_pb2.GetResultRequest(request_id=request_id, wait=True)
        return str(client.inference.GetResult(request, timeout=RESULT_TIMEOUT_SECONDS).output_json)


def pid_of(stack: StackProcess) -> int:
    assert stack.process is not None
    return stack.process.pid


def port_of(stack: StackProcess) -> int:
    return int(stack.grpc_address.rsplit(":", 1)[1])


def established_connections(port: int) -> int:
    """TCP connections accepted on `port` and still open, from Linux's socket tables (state 01 = ESTABLISHED).

    gRPC's sockets are IPv6 ones even for 127.0.0.1 (v4-mapped), so both tables count.
    """
    lines = [line for table in ("tcp", "tcp6") for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    return sum(1 for fields in map(str.split, lines) if int(fields[1].split(":")[1], 16) == port and fields[3] == "01")


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def start_together(stacks: list[StackProcess]) -> None:
    """Start the stacks at once (each start waits for its `ferry ready` line)."""
    with ThreadPoolExecutor(len(stacks)) as starting:
        list(starting.map(lambda stack: stack.start(), stacks))


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"ferry-drill-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def drill(redis: RedisServer, s3_endpoint: str, bucket: str, tmp_path: Path) -> Iterator[Drill]:
    """Two encoders on the bucket, then three inference replicas on the queue; all stopped afterwards."""
    storage = ["--storage", f"s3://{bucket}/drill", "--s3-endpoint-url", s3_endpoint]
    draining = ["--drain-seconds", ENCODER_DRAIN_SECONDS]
    encoders = [
        StackProcess(
            ["encoder", "--data-dir", str(tmp_path / f"encoder{n}"), *storage, *draining], env=AWS_TEST_CREDENTIALS
        )
        for n in range(2)
    ]
    replicas: list[StackProcess] = []
    try:
        start_together(encoders)
        first, second = (encoder.grpc_address for encoder in encoders)
        for n, (a, b) in enumerate([(first, second), (second, first), (first, second)]):
            inference = ["inference", "--data-dir", str(tmp_path / f"inference{n}"), "--app", APP]
            queue = ["--queue", redis.url, "--lease-seconds", LEASE_SECONDS]
            replicas.append(StackProcess([*inference, *queue, "--encoder", a, "--encoder", b]))
        start_together(replicas)
        drill_dir = tmp_path / "drill"
        drill_dir.mkdir()
        yield Drill(encoders, replicas, drill_dir, bucket, s3_endpoint)
    finally:
        for stack in [*replicas, *encoders]:
            stack.stop()


def test_sixty_requests_complete_once_each_though_a_replica_is_killed_mid_request_and_an_encoder_stops(
    drill: Drill,
) -> None:
    replicas, encoders = drill.replicas, drill.encoders
    victim, survivors, stopped_encoder = replicas[2], replicas[:2], encoders[0]
    request_ids = [drill.submit(replicas[key % len(replicas)], key) for key in range(REQUESTS)]
    key_of = {request_id: key for key, request_id in enumerate(request_ids)}

    # Kill -9 the victim inside a handler: once it has run a few requests, hold its next one there and kill it.
    wait_for(lambda: sum(run.pid == pid_of(victim) for run in drill.runs("end")) >= 2, "the victim to run requests")
    (drill.drill_dir / f"hold-{pid_of(victim)}").touch()
    (held,) = wait_for(lambda: drill.runs("held"), "the victim to be inside a handler")
    assert victim.process is not None
    victim.process.kill()
    victim.wait()

    # Stop (SIGTERM) an encoder in use while the survivors still have most of the requests to run.
    ended_at_kill = len(drill.runs("end"))
    wait_for(lambda: len(drill.runs("end")) >= ended_at_kill + 3, "the survivors to go on after the kill")
    assert established_connections(port_of(stopped_encoder)) > 0, "the stopped encoder was serving replicas"
    stopped_encoder.stop()
    assert stopped_encoder.process is not None and stopped_encoder.process.returncode == 0, stopped_encoder.stderr
    runs_before_encoder_stop = len(drill.runs())

    # Every request completes, and either surviving replica gives the same one answer for it.
    outputs = {}
    for index, request_id in enumerate(request_ids):
        here, there = survivors[index % 2], survivors[(index + 1) % 2]
        outputs[request_id] = result(here, request_id)
        assert result(there, request_id) == outputs[request_id]
    documents = {request_id: json.loads(output) for request_id, output in outputs.items()}
    assert all(document["key"] == key_of[request_id] for request_id, document in documents.items())

    # The run log: every request ran; only the killed replica's in-flight ones ran again, each once, on a survivor.
    starts = drill.runs("start")
    assert {run.request_id for run in starts} == set(request_ids), "every request ran, and nothing else did"
    assert all(key_of[run.request_id] == run.key for run in starts)
    rerun = {request_id for request_id, count in Counter(run.request_id for run in starts).items() if count > 1}
    assert held.request_id in rerun, "the request killed mid-handler ran again"
    for request_id in rerun:
        first_run, second_run = [run for run in starts if run.request_id == request_id]  # twice, no more
        assert first_run.pid == pid_of(victim) and second_run.pid in {pid_of(s) for s in survivors}
    # Its slot freed when a handler returned, while that request's outputs encoded: the only other request the
    # victim can have had in flight is the one it started just before the held one.
    on_victim = [run.request_id for run in starts if run.pid == pid_of(victim)]
    assert rerun <= {held.request_id, on_victim[on_victim.index(held.request_id) - 1]}
    # The replica that encoded on the stopped encoder went on running (and encoding) requests after it stopped.
    later = drill.runs()[runs_before_encoder_stop:]
    assert any(run.what == "end" and run.pid == pid_of(replicas[0]) for run in later)

    # The bucket: each result's image is there and decodes to its pixels, and nothing else: a re-run stored its
    # outputs under its first run's keys, replacing what that run stored before the kill.
    stored = drill.stored_keys()
    assert len(stored) == REQUESTS
    assert len({document["image"]["url"] for document in documents.values()}) == REQUESTS
    for request_id, document in documents.items():
        url = document["image"]["url"]
        assert urlsplit(url).path.removeprefix(f"/{drill.bucket}/") in stored
        decoded = np.asarray(PILImage.open(io.BytesIO(fetch(url))).convert("RGB"))
        assert np.array_equal(decoded, pixels(key_of[request_id]))

    per_replica = Counter(run.pid for run in starts)
    print(  # the drill's figures, for `pytest -s`
        f"drill: {REQUESTS} requests, {len(starts)} handler runs ({len(rerun)} re-run after the kill), "
        f"{len(stored)} objects stored, runs per replica {[per_replica[pid_of(r)] for r in replicas]}"
    )
