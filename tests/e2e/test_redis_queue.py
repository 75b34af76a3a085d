"""`ferry serve --queue redis://…`: replicas on one Redis answer for each other, and ride out a Redis restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.client import INFERENCE_SERVICE
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2
from tests.harness import wait_for
from tests.redis_server import RedisServer

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def replica(tmp_path: Path, redis: RedisServer):
    """Start a `ferry serve --app sample` replica on the Redis queue, with its own data dir."""
    started: list[StackProcess] = []

    def start() -> StackProcess:
        data_dir = tmp_path / f"replica{len(started)}"
        stack = StackProcess(["--data-dir", str(data_dir), "--app", APP, "--queue", redis.url, "--lease-seconds", "1"])
        started.append(stack)
        return stack.start()

    yield start
    for stack in started:
        stack.stop()


def submit(stack: StackProcess, arguments: str, path: str = "/") -> str:
    with stack.client() as client:
        request = inference_pb2.SubmitRequest(app_id="sample", path=path, input_json=arguments)
        return str(client.inference.Submit(request, timeout=10).request_id)


def result(stack: StackProcess, request_id: str) -> str:
    with stack.client() as client:
        request = inference_pb2.GetResultRequest(request_id=request_id, wait=True)
        return str(client.inference.GetResult(request, timeout=60).output_json)


def health(stack: StackProcess) -> str:
    with stack.client() as client:
        return client.health(INFERENCE_SERVICE)


def test_a_request_submitted_to_one_replica_is_answered_by_another(replica) -> None:
    a, b = replica(), replica()
    ids = [submit(a, f'{{"text": "{n}"}}') for n in range(6)]
    assert [result(b, i) for i in ids] == [f'{{"text":"{n}"}}' for n in range(6)]
    with b.client() as client:
        status = client.inference.GetStatus(inference_pb2.GetStatusRequest(request_id=ids[0]))
    assert status.state == inference_pb2.REQUEST_STATE_COMPLETED


def test_while_redis_is_down_submits_fail_unavailable_and_health_says_so_then_all_resumes(
    replica, redis: RedisServer
) -> None:
    stack = replica()
    waiting = submit(stack, '{"steps": 1, "step_seconds": 0.01}', "/slow")
    assert result(stack, waiting) == '{"finished_steps":1}'
    queued = submit(stack, '{"text": "kept"}')

    redis.stop()
    with pytest.raises(grpc.RpcError) as refused:
        submit(stack, '{"text": "lost?"}')
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: health(stack) == "NOT_SERVING", "the replica to report the queue unreachable")

    redis.start()  # appendonly: what was queued is still there
    wait_for(lambda: health(stack) == "SERVING", "the replica to reconnect by itself")
    assert result(stack, queued) == '{"text":"kept"}'
    assert result(stack, submit(stack, '{"text": "again"}')) == '{"text":"again"}'


def test_a_replica_whose_redis_cannot_be_reached_says_so_in_one_line_and_exits(tmp_path: Path) -> None:
    stack = StackProcess(["--data-dir", str(tmp_path), "--app", APP, "--queue", "redis://127.0.0.1:1/0"])
    with pytest.raises(RuntimeError) as failed:
        stack.start()
    assert "cannot open the request queue" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_a_queue_url_that_is_not_redis_is_refused_naming_the_flag(tmp_path: Path) -> None:
    stack = StackProcess(["--data-dir", str(tmp_path), "--app", APP, "--queue", "amqp://somewhere"])
    with pytest.raises(RuntimeError) as failed:
        stack.start()
    assert "--queue" in str(failed.value)


def test_a_stream_opened_on_another_replica_sees_the_history_then_live_events(replica) -> None:
    a, b = replica(), replica()
    with a.client() as on_a, b.client() as on_b:
        handle = on_a.submit("sample", {"steps": 30, "step_seconds": 0.05}, path="/slow")
        wait_for(lambda: handle.status().progress is not None, "it to report progress on replica A")
        events = list(ferry.RequestHandle(on_b, handle.request_id).stream())

    progress = [event.progress for event in events if isinstance(event, ferry.InProgress) and event.progress]
    assert progress[0][0] == 1, "the history from before the stream was opened"
    assert progress[-1][0] == 30
    assert isinstance(events[-1], ferry.Completed) and events[-1].output == {"finished_steps": 30}
    assert {event.request_id for event in events} == {handle.request_id}


def test_leaving_a_followed_stream_leaves_the_request_running(replica) -> None:
    stack = replica()
    with stack.client() as client:
        handle = client.submit("sample", {"steps": 40, "step_seconds": 0.05}, path="/slow")
        for event in handle.stream():
            if isinstance(event, ferry.InProgress):
                break
        assert handle.get(timeout=30) == {"finished_steps": 40}
