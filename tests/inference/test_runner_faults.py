"""The runner under stress and misbehaving handlers: hangs, time limits, floods of submits, failing health checks."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.testing import StackProcess
from tests.harness import wait_for

HERE = Path(__file__).parent
MEDIA_APPS = HERE / "media_app.py"
SAMPLE_APP = f"{HERE / 'sample_app.py'}:SampleApp"


@pytest.fixture(scope="module")
def unhealthy_flag(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("health") / "unhealthy"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, unhealthy_flag):
    apps = [f"{MEDIA_APPS}:{name}" for name in ("MediaApp", "DeadlineApp", "ProbedApp")]
    args = ["--data-dir", str(tmp_path_factory.mktemp("faults")), "--app", SAMPLE_APP]
    for app in apps:
        args += ["--app", app]
    with StackProcess(args, env={"FERRY_TEST_UNHEALTHY_FLAG": str(unhealthy_flag)}) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with stack.client() as client:
        yield client


@pytest.mark.parametrize("path", ["/hang", "/hang-async"])
def test_a_hanging_handler_is_cut_off_by_the_callers_deadline_and_frees_its_slot(client, path):
    with pytest.raises(ferry.FerryError) as caught:
        client.run("media", {}, path=path, timeout=1)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # MediaApp runs one request at a time: this one only runs because the hung one was stopped.
    assert client.run("media", {"steps": 2}, timeout=20) == {"steps": 2}


def test_a_cancelled_handler_that_never_polls_is_stopped_at_its_next_media_call(client, tmp_path):
    counter = tmp_path / "encoded"
    handle = client.submit("media", {"counter_file": str(counter), "rounds": 500}, path="/encode-loop")
    wait_for(lambda: counter.exists() and int(counter.read_text() or 0) >= 3, "a few encodes")
    assert handle.cancel() is True
    # One slot: this runs only once the cancelled handler's thread has returned.
    assert client.run("media", {"steps": 5}, timeout=60) == {"steps": 5}
    assert int(counter.read_text()) < 500, "the loop stopped at the encode after the cancel"
    assert handle.status().error.code == grpc.StatusCode.CANCELLED


def test_a_request_past_the_apps_time_limit_fails_deadline_exceeded(client):
    handle = client.submit("deadline", {"steps": 30})
    with pytest.raises(ferry.FerryError) as caught:
        handle.get(timeout=20)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and caught.value.reason == "REQUEST_TIMEOUT"
    assert handle.status().error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.run("deadline", {"steps": 0}) == {"steps": 0}


def test_two_hundred_concurrent_submits_with_concurrency_one_hold_exact_positions_and_all_finish(client):
    blocker = client.submit("sample", {"steps": 10_000, "step_seconds": 0.01}, path="/slow")
    wait_for(lambda: blocker.status().state == "IN_PROGRESS", "the blocker to hold the only slot")
    with ThreadPoolExecutor(max_workers=32) as pool:
        handles = list(pool.map(lambda i: client.submit("sample", {"text": str(i)}), range(200)))
        positions = list(pool.map(lambda h: h.status().position, handles))
    assert sorted(positions) == list(range(200)), "every waiting request has its own place"

    cancelled = handles[::10]
    assert all(h.cancel() for h in cancelled)
    remaining = [h for h in handles if h not in cancelled]
    with ThreadPoolExecutor(max_workers=32) as pool:
        positions_after = list(pool.map(lambda h: h.status().position, remaining))
    order = sorted(range(len(remaining)), key=lambda i: positions[handles.index(remaining[i])])
    assert [positions_after[i] for i in order] == list(range(180)), "the queue closes up behind cancellations, in order"

    assert blocker.cancel()
    results = {h.request_id: h.get(timeout=120) for h in remaining}
    assert len(results) == 180 and all(result["text"] for result in results.values())
    assert all(h.status().error.code == grpc.StatusCode.CANCELLED for h in cancelled)


def test_a_failing_health_check_flips_only_that_app_to_not_serving_until_it_recovers(client, unhealthy_flag):
    name = "ferry.v1.InferenceService/probed"
    assert client.health(name) == "SERVING"
    assert client.health("ferry.v1.InferenceService/media") == "SERVING", "every app has its own status"
    unhealthy_flag.touch()
    try:
        wait_for(lambda: client.health(name) == "NOT_SERVING", "the probe to fail twice in a row")
        assert client.health("ferry.v1.InferenceService/media") == "SERVING"
        assert client.health("") == "SERVING", "one sick app does not take the server down"
        assert client.run("probed", {"steps": 4}) == {"steps": 4}, (
            "requests still reach it: health is for the orchestrator"
        )
    finally:
        os.unlink(unhealthy_flag)
    wait_for(lambda: client.health(name) == "SERVING", "the next good probe")
