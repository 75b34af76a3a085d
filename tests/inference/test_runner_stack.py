"""The InferenceService through `ferry serve --app`: run, stream, queue API, cancellation, errors, schemas."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.v1 import inference_pb2
from tests.harness import wait_for

APP = f"{Path(__file__).with_name('sample_app.py')}:SampleApp"


@pytest.fixture
def stack(start_ferry):
    return start_ferry("--app", APP)


@pytest.fixture
def client(stack):
    with stack.client() as client:
        yield client


def test_run_returns_the_handlers_output(client):
    assert client.run("sample", {"text": "ab", "times": 2}) == {"text": "abab"}
    assert client.run("sample", {"text": "hey"}, path="/async") == {"text": "HEY"}


def test_unknown_app_and_path_are_not_found(client):
    for app, path in (("nope", "/"), ("sample", "/nope")):
        with pytest.raises(ferry.FerryError) as caught:
            client.run(app, {"text": "x"}, path=path)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_invalid_json_and_wrong_types_are_invalid_arguments_naming_the_fields(client):
    with pytest.raises(grpc.RpcError) as caught:
        client.inference.Run(inference_pb2.RunRequest(app_id="sample", input_json="{not json"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ferry.FerryError) as caught:
        client.run("sample", {"text": 3, "times": "many"})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in caught.value.message and "times" in caught.value.message


def test_a_failing_handler_is_internal_with_its_message_and_the_runner_stays_healthy(client):
    with pytest.raises(ferry.FerryError) as caught:
        client.run("sample", {"text": "boom"}, path="/fail")
    assert caught.value.code == grpc.StatusCode.INTERNAL and "model exploded on 'boom'" in caught.value.message
    assert client.run("sample", {"text": "ok"}) == {"text": "ok"}


def test_media_outputs_are_urls(client):
    output = client.run("sample", {"size": 8}, path="/image")
    image = ferry.Image.model_validate(output["image"])
    assert (image.width, image.height) == (8, 8)
    with urllib.request.urlopen(image.url) as response:
        assert response.read().startswith(b"\x89PNG")


def test_stream_reports_progress_logs_then_completion(client):
    events = list(client.stream("sample", {"steps": 5, "step_seconds": 0.01}, path="/slow"))
    assert isinstance(events[-1], ferry.events.Completed) and events[-1].output == {"finished_steps": 5}
    updates = [event for event in events if isinstance(event, ferry.InProgress)]
    progress = [update.progress for update in updates if update.progress is not None]
    logs = [line for update in updates for line in update.logs]
    assert progress[-1] == ferry.events.Progress(5, 5, "")
    assert logs[-1]["message"] == "step 5" and logs[-1]["level"] == "INFO" and logs[-1]["timestamp"]
    assert {event.request_id for event in events} == {events[0].request_id}


def test_queue_positions_status_result_and_cancel(client):
    running = client.submit("sample", {"steps": 100, "step_seconds": 0.05}, path="/slow")
    queued = [client.submit("sample", {"text": str(i)}) for i in range(3)]
    assert [h.status().position for h in queued] == [0, 1, 2]
    assert queued[1].cancel() is True and queued[1].status().error.code == grpc.StatusCode.CANCELLED
    assert [h.status().position for h in (queued[0], queued[2])] == [0, 1]
    assert running.status().state == "IN_PROGRESS"
    assert running.cancel() is True, "cancelling a running request"
    assert running.cancel() is False, "cancelling twice is a no-op"
    with pytest.raises(ferry.FerryError) as caught:
        running.get()
    assert caught.value.code == grpc.StatusCode.CANCELLED
    assert queued[0].get() == {"text": "0"} and queued[2].get() == {"text": "2"}
    assert queued[0].cancel() is False, "after completion there is nothing to cancel"


def test_a_disconnected_stream_caller_cancels_its_request(client):
    events = client.stream("sample", {"steps": 200, "step_seconds": 0.05}, path="/slow")
    first = next(e for e in events if isinstance(e, ferry.InProgress))
    events.close()  # the caller walks away
    handle = ferry.RequestHandle(client, first.request_id)
    wait_for(lambda: handle.status().state == "CANCELLED", "the request to be cancelled")
    assert handle.status().error.code == grpc.StatusCode.CANCELLED


def test_concurrent_submits_all_complete_in_order_with_concurrency_one(client):
    handles = [client.submit("sample", {"text": str(i)}) for i in range(50)]
    results = [h.get(timeout=60) for h in handles]
    assert results == [{"text": str(i)} for i in range(50)]


def test_list_endpoints_gives_self_contained_schemas(client):
    (app,) = client.inference.ListEndpoints(inference_pb2.ListEndpointsRequest()).apps
    assert app.app_id == "sample" and app.machine_type == "GPU"
    endpoints = {e.path: e for e in app.endpoints}
    assert set(endpoints) == {"/", "/slow", "/fail", "/refuse", "/image", "/async"}
    # The handler's docstring, cleaned as help() shows it; none, nothing.
    described = "Echoes the text, repeated.\n\nThe whole docstring is the endpoint's description."
    assert endpoints["/"].description == described
    assert endpoints["/fail"].description == ""
    output = json.loads(endpoints["/image"].output_schema_json)
    assert "$ref" not in json.dumps(output)
    assert output["properties"]["image"]["ui"]["preview"] == "image"
