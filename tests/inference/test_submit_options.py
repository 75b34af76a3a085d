"""What a submit may ask of the queue, as the reference platform's queue offers it: an idempotency key,
a low priority, a start timeout — through the SDK and `ferry serve --app`."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.v1 import inference_pb2
from tests.harness import wait_for

APP = f"{Path(__file__).with_name('sample_app.py')}:SampleApp"
BLOCKER = {"steps": 2000, "step_seconds": 0.01}  # holds the app's one slot until cancelled


@pytest.fixture
def client(start_ferry):
    with start_ferry("--app", APP).client() as client:
        yield client


def test_a_retried_submit_with_the_same_key_is_the_same_request(client) -> None:
    first = client.submit("sample", {"text": "once"}, idempotency_key="order-17")
    again = client.submit("sample", {"text": "once"}, idempotency_key="order-17")
    other = client.submit("sample", {"text": "once"}, idempotency_key="order-18")
    assert first.request_id == again.request_id != other.request_id
    assert first.get() == {"text": "once"}
    status = client.inference.GetStatus(inference_pb2.GetStatusRequest(request_id=first.request_id))
    assert status.attempt == 1, "the model ran once"


def test_a_low_priority_request_runs_after_every_normal_one_waiting(client) -> None:
    blocker = client.submit("sample", BLOCKER, path="/slow")
    wait_for(lambda: blocker.status().state == "IN_PROGRESS", "the blocker to hold the slot")
    low = client.submit("sample", {"steps": 40, "step_seconds": 0.05}, path="/slow", priority="low")
    normal = client.submit("sample", {"steps": 40, "step_seconds": 0.05}, path="/slow")
    assert (low.status().position, normal.status().position) == (1, 0)

    blocker.cancel()
    wait_for(lambda: normal.status().state == "IN_PROGRESS", "the normal one to start")
    assert low.status().state == "QUEUED"
    normal.cancel()
    low.cancel()


def test_a_request_not_started_within_its_start_timeout_fails_and_never_runs(client) -> None:
    blocker = client.submit("sample", BLOCKER, path="/slow")
    wait_for(lambda: blocker.status().state == "IN_PROGRESS", "the blocker to hold the slot")
    late = client.submit("sample", {"text": "late"}, start_timeout=0.3)
    wait_for(lambda: late.status().position == 0, "it to wait")
    time.sleep(0.6)  # past its start timeout, still waiting
    blocker.cancel()
    with pytest.raises(ferry.FerryError) as failed:
        late.get()
    assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "START_TIMEOUT")
    status = client.inference.GetStatus(inference_pb2.GetStatusRequest(request_id=late.request_id))
    assert status.attempt == 0, "it never ran"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("start_timeout_seconds", -1.0, "BAD_START_TIMEOUT"),
        ("start_timeout_seconds", 1e9, "BAD_START_TIMEOUT"),
        ("idempotency_key", "k" * 300, "BAD_IDEMPOTENCY_KEY"),
    ],
)
def test_nonsense_submit_options_are_invalid_arguments(client, field: str, value: object, reason: str) -> None:
    request = inference_pb2.SubmitRequest(app_id="sample", input_json='{"text": "x"}', **{field: value})
    with pytest.raises(grpc.RpcError) as refused:
        client.inference.Submit(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in str(ferry.FerryError.from_rpc_error(refused.value).reason)


def test_the_sdk_refuses_a_priority_it_does_not_know(client) -> None:
    with pytest.raises(ValueError, match="priority"):
        client.submit("sample", {"text": "x"}, priority="urgent")  # type: ignore[typeddict-item]
