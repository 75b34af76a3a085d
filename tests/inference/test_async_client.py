"""`AsyncClient`'s app calls behave like `Client`'s: run, submit (status, get, cancel), stream, subscribe."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import ferry
from ferry.testing import StackProcess

APP = f"{Path(__file__).with_name('sample_app.py')}:SampleApp"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with StackProcess(["--data-dir", str(tmp_path_factory.mktemp("async-stack")), "--app", APP]) as stack:
        yield stack


async def test_run_returns_the_output_and_errors_keep_their_status(stack):
    async with ferry.AsyncClient(stack.grpc_address) as client:
        assert await client.run("sample", {"text": "ab", "times": 2}) == {"text": "abab"}
        with pytest.raises(ferry.FerryError) as caught:
            await client.run("sample", {"times": "many"})
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_local_path_arguments_are_uploaded_first(stack, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello")
    async with ferry.AsyncClient(stack.grpc_address) as client:
        output = await client.run("sample", {"text": note})
    assert output["text"].startswith("http") and output["text"].endswith("/note.txt")


async def test_submit_gives_a_handle_to_poll_wait_for_and_cancel(stack):
    async with ferry.AsyncClient(stack.grpc_address) as client:
        running = await client.submit("sample", {"steps": 200, "step_seconds": 0.05}, path="/slow")
        queued = await client.submit("sample", {"text": "next"})
        assert (await queued.status()).position == 0
        assert await running.cancel() is True
        cancelled = await running.status()
        assert cancelled.state == "CANCELLED" and cancelled.error.code == grpc.StatusCode.CANCELLED
        assert await queued.get(timeout=30) == {"text": "next"}
        states = [status.state async for status in queued.iter_events(interval=0.01)]
        assert states == ["COMPLETED"]


async def test_stream_yields_progress_then_completion(stack):
    async with ferry.AsyncClient(stack.grpc_address) as client:
        events = [event async for event in client.stream("sample", {"steps": 3, "step_seconds": 0.01}, path="/slow")]
    assert events[-1] == ferry.events.Completed({"finished_steps": 3}, request_id=events[0].request_id)
    assert any(isinstance(event, ferry.InProgress) and event.progress is not None for event in events)


async def test_subscribe_reports_queue_updates_and_cancels_past_its_timeout(stack):
    updates = []
    async with ferry.AsyncClient(stack.grpc_address) as client:
        output = await client.subscribe(
            "sample", {"steps": 2, "step_seconds": 0.01}, path="/slow", on_queue_update=updates.append
        )
        assert output == {"finished_steps": 2} and updates
        assert all(isinstance(update, (ferry.Queued, ferry.InProgress)) for update in updates)
        with pytest.raises(ferry.FerryError) as caught:
            await client.subscribe("sample", {"steps": 500, "step_seconds": 0.05}, path="/slow", client_timeout=0.5)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The abandoned request was cancelled, so the one slot is free again.
        assert await client.run("sample", {"text": "free"}, timeout=20) == {"text": "free"}


async def test_a_misspelt_keyword_is_a_type_error_as_with_any_named_parameter(stack):
    async with ferry.AsyncClient(stack.grpc_address) as client:
        with pytest.raises(TypeError, match=r"subscribe.*'with_log'"):
            await client.subscribe("sample", {"text": "x"}, with_log=True)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"download_file.*'filesize_limit_mb'"):
            await client.download_file("data:,x", filesize_limit_mb=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"download_model_weights.*'filesize_limit'"):
            await client.download_model_weights("data:,x", filesize_limit=1)  # type: ignore[call-arg]
