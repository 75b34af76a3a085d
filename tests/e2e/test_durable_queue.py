"""Requests outlive the process that took them, and any replica answers for any of them (the embedded queue).

`ferry serve --app` keeps its requests in a SQLite file under the data dir:
killed with requests queued and one running, a restarted server runs them all;
two servers on one data dir are two replicas of one queue.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import httpx
import pytest

from ferry.inference.queue.base import State, Status
from ferry.inference.queue.sqlite import SqliteQueue
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2
from tests.harness import wait_for

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"


@pytest.fixture
def replica(tmp_path: Path):
    """Start `ferry serve --app sample` on the shared data dir; every replica is stopped afterwards."""
    started: list[StackProcess] = []

    def start(*flags: str) -> StackProcess:
        stack = StackProcess(["--data-dir", str(tmp_path / "data"), "--app", APP, "--lease-seconds", "1", *flags])
        started.append(stack)
        return stack.start()

    yield start
    for stack in started:
        stack.stop()


def submit(stack: StackProcess, path: str, arguments: str) -> str:
    with stack.client() as client:
        request = inference_pb2.SubmitRequest(app_id="sample", path=path, input_json=arguments)
        return str(client.inference.Submit(request).request_id)


def state(stack: StackProcess, request_id: str) -> inference_pb2.GetStatusResponse:
    with stack.client() as client:
        response: inference_pb2.GetStatusResponse = client.inference.GetStatus(
            inference_pb2.GetStatusRequest(request_id=request_id)
        )
        return response


async def status_on_disk(tmp_path: Path, request_id: str) -> Status:
    """The request as the queue file records it, read with no server running."""
    queue = await SqliteQueue.open(tmp_path / "data" / "queue.sqlite3")
    try:
        return await queue.status(request_id)
    finally:
        await queue.close()


def result(stack: StackProcess, request_id: str) -> str:
    with stack.client() as client:
        request = inference_pb2.GetResultRequest(request_id=request_id, wait=True)
        return str(client.inference.GetResult(request, timeout=60).output_json)


def test_a_server_killed_with_requests_queued_and_running_runs_them_all_once_restarted(replica) -> None:
    first = replica()
    running = submit(first, "/slow", '{"steps": 100, "step_seconds": 0.05}')
    wait_for(lambda: state(first, running).state == inference_pb2.REQUEST_STATE_IN_PROGRESS, "it to start")
    queued = [submit(first, "/", f'{{"text": "{n}"}}') for n in range(5)]
    assert [state(first, i).queue_position for i in queued] == [0, 1, 2, 3, 4]

    assert first.process is not None
    first.process.kill()  # kill -9: nothing is flushed, nothing is handed over
    first.wait()
    second = replica()

    assert [result(second, i) for i in queued] == [f'{{"text":"{n}"}}' for n in range(5)]
    assert result(second, running) == '{"finished_steps":100}', "the interrupted one ran again, from the start"
    assert state(second, running).attempt == 2 and state(second, queued[0]).attempt == 1
    redelivered = [
        line for line in httpx.get(f"{second.cdn_url}/metrics").text.splitlines() if "redeliveries_total{" in line
    ]
    assert redelivered == ['ferry_redeliveries_total{app="sample"} 1.0']


def test_any_replica_answers_for_a_request_another_one_runs_and_cancels_it(replica) -> None:
    a, b = replica(), replica()
    request_id = submit(a, "/slow", '{"steps": 400, "step_seconds": 0.05}')
    wait_for(lambda: state(b, request_id).state == inference_pb2.REQUEST_STATE_IN_PROGRESS, "it to start")
    wait_for(lambda: state(b, request_id).progress.current >= 1, "its progress to reach the other replica")

    with b.client() as client:
        cancelled = client.inference.Cancel(inference_pb2.CancelRequest(request_id=request_id))
    assert (cancelled.previous_state, cancelled.cancelled) == (inference_pb2.REQUEST_STATE_IN_PROGRESS, True)

    final = state(a, request_id)
    assert final.state == inference_pb2.REQUEST_STATE_COMPLETED
    assert final.error.code == grpc.StatusCode.CANCELLED.value[0]
    # Both replicas keep serving the one queue.
    follow_up = submit(b, "/", '{"text": "next"}')
    assert result(a, follow_up) == '{"text":"next"}'


async def test_a_replica_told_to_stop_lets_its_running_handler_finish_first(replica, tmp_path: Path) -> None:
    stack = replica()
    request_id = submit(stack, "/slow", '{"steps": 20, "step_seconds": 0.05}')
    wait_for(lambda: state(stack, request_id).state == inference_pb2.REQUEST_STATE_IN_PROGRESS, "it to start")

    stack.signal(signal.SIGTERM)  # a rolling update: drain, then exit
    assert stack.wait() == 0

    status = await status_on_disk(tmp_path, request_id)
    assert (status.state, status.output_json, status.attempt) == (State.COMPLETED, '{"finished_steps":20}', 1)


async def test_a_handler_still_running_when_the_drain_ends_goes_back_to_the_queue_without_counting(
    replica, tmp_path: Path
) -> None:
    stack = replica("--drain-seconds", "0.2", "--lease-seconds", "600")  # a lease no test would outwait
    request_id = submit(stack, "/slow", '{"steps": 400, "step_seconds": 0.05}')
    wait_for(lambda: state(stack, request_id).state == inference_pb2.REQUEST_STATE_IN_PROGRESS, "it to start")

    stack.signal(signal.SIGTERM)  # the handler outlasts the drain: stopped, and handed back
    assert stack.wait() == 0
    handed_back = await status_on_disk(tmp_path, request_id)
    assert (handed_back.state, handed_back.position, handed_back.attempt) == (State.QUEUED, 0, 0)

    restarted = replica("--lease-seconds", "600")
    wait_for(lambda: state(restarted, request_id).state == inference_pb2.REQUEST_STATE_IN_PROGRESS, "it to run again")
    assert state(restarted, request_id).attempt == 1
