"""The Realtime RPC through `ferry serve --app`.

One call, many inputs, per-message errors, failures, vanishing callers.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import ferry
from ferry.realtime_connection import SESSION_KEY
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2

APP = f"{Path(__file__).with_name('realtime_app.py')}:RealtimeApp"


@pytest.fixture(scope="module")
def closed_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the sample app's handlers note that their `finally` ran."""
    return tmp_path_factory.mktemp("realtime") / "closed.log"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, closed_log: Path) -> Iterator[StackProcess]:
    data = tmp_path_factory.mktemp("realtime-data")
    with StackProcess(
        ["--data-dir", str(data), "--app", APP], env={"FERRY_TEST_REALTIME_LOG": str(closed_log)}
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: StackProcess) -> Iterator[ferry.Client]:
    with stack.client() as client:
        yield client


def wait_until_closed(log: Path, request_id: str, timeout: float = 5.0) -> str:
    """The line the handler of session `request_id` wrote from its `finally`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if found := [line for line in lines if line.startswith(request_id)]:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the handler of session {request_id} never ran its finally")


def raw_call(
    client: ferry.Client, messages: list[inference_pb2.RealtimeRequest]
) -> list[inference_pb2.RealtimeResponse] | grpc.RpcError:
    """Send `messages` through the generated stub, half-close: every response, or how the call failed."""
    try:
        return list(client.inference.Realtime(iter(messages), timeout=10))
    except grpc.RpcError as error:
        return error


def open_message(path: str, app: str = "live", sends_end: bool = False) -> inference_pb2.RealtimeRequest:
    return inference_pb2.RealtimeRequest(open=inference_pb2.RealtimeOpen(app_id=app, path=path, sends_end=sends_end))


END = inference_pb2.RealtimeRequest(end=inference_pb2.RealtimeEnd())


def input_message(input_json: str) -> inference_pb2.RealtimeRequest:
    return inference_pb2.RealtimeRequest(input_json=input_json)


# -- the happy path ------------------------------------------------------------------------


def test_many_inputs_over_one_call_come_back_as_outputs_in_order(client):
    with client.realtime("live", "/invert") as live:
        for i in range(40):  # more than the server buffers: backpressure, not loss
            live.send({"values": [i, -1.5]})
        outputs = [live.recv(timeout=10) for _ in range(40)]
        assert outputs == [{"values": [-i, 1.5], "index": i} for i in range(40)]
        live.close()
        assert list(live) == [], "the handler returned once the caller stopped sending"
        with pytest.raises(EOFError):
            live.recv(timeout=5)


def test_inputs_may_be_models_and_outputs_may_be_dicts_validated_against_the_output_model(client):
    from pydantic import BaseModel

    class Text(BaseModel):
        text: str

    with client.realtime("live", "/echo") as live:
        live.send(Text(text="one"))
        live.send({"text": "two"})
        assert [live.recv(timeout=10), live.recv(timeout=10)] == [
            {"text": "one", "count": 1},
            {"text": "two", "count": 2},
        ]


def test_closing_ends_the_handlers_input_iterator(client):
    with client.realtime("live", "/sum") as live:
        for values in ([1, 2], [3], [4.5]):
            live.send({"values": values})
        live.close()
        assert list(live) == [{"total": 10.5, "inputs": 3}]
        with pytest.raises(RuntimeError, match="closed for sending"):
            live.send({"values": [1]})


def test_recv_times_out_without_disturbing_the_call(client):
    with client.realtime("live", "/invert") as live:
        with pytest.raises(TimeoutError):
            live.recv(timeout=0.2)
        live.send({"values": [2]})
        assert live.recv(timeout=10) == {"values": [-2.0], "index": 0}


def test_the_open_call_names_its_session(client):
    with client.realtime("live", "/invert") as first, client.realtime("live", "/invert") as second:
        assert len(first.request_id) == 32 and first.request_id != second.request_id


def test_module_level_realtime_uses_the_stack_at_ferry_address(stack, monkeypatch):
    monkeypatch.setenv("FERRY_ADDRESS", stack.grpc_address)
    with ferry.realtime("live", "/invert") as live:
        live.send({"values": [1]})
        assert live.recv(timeout=10)["values"] == [-1.0]


# -- bad messages ----------------------------------------------------------------------------


def test_a_bad_message_mid_stream_is_rejected_alone_and_the_call_goes_on(client):
    with client.realtime("live", "/invert") as live:
        live.send({"values": [1]})
        assert live.recv(timeout=10)["index"] == 0
        live.send({"values": "not a list", "extra": 1})
        with pytest.raises(ferry.FerryError) as rejected:
            live.recv(timeout=10)
        assert rejected.value.code == grpc.StatusCode.INVALID_ARGUMENT and rejected.value.reason == "INVALID_INPUT"
        assert "values" in rejected.value.message
        live.send({"values": [2]})
        assert live.recv(timeout=10) == {"values": [-2.0], "index": 1}, "the handler never saw the bad input"


def test_invalid_json_wrong_types_and_stray_messages_each_get_an_error_response(client):
    responses = raw_call(
        client,
        [
            open_message("/invert"),
            input_message('{"values": [1]}'),
            input_message("{not json"),
            input_message('{"values": ["x"]}'),
            open_message("/invert"),  # only the first message opens
            input_message('{"values": [2]}'),
        ],
    )
    assert isinstance(responses, list), "rejected inputs do not end the call"
    outputs = [r.output_json for r in responses if r.WhichOneof("message") == "output_json"]
    errors = [r.error for r in responses if r.WhichOneof("message") == "error"]
    assert outputs == ['{"values":[-1.0],"index":0}', '{"values":[-2.0],"index":1}']
    assert [e.reason for e in errors] == ["INVALID_JSON", "INVALID_INPUT", "NOT_AN_INPUT"]
    assert {e.code for e in errors} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert "values.0" in errors[1].message


def test_a_caller_that_does_not_promise_end_ends_its_inputs_by_half_closing(client):
    responses = raw_call(client, [open_message("/sum"), input_message('{"values": [1, 2]}')])
    assert isinstance(responses, list)
    assert [r.output_json for r in responses] == ['{"total":3.0,"inputs":1}']


def test_nothing_may_follow_end(client, closed_log):
    messages = [
        open_message("/echo", sends_end=True),
        input_message('{"text": "slow", "delay_seconds": 30}'),  # the handler is busy while the rest arrives
        END,
        input_message('{"text": "late"}'),
    ]
    call = client.inference.Realtime(iter(messages), timeout=10)
    try:
        rejected = next(call)  # the only answer while the handler sleeps
    finally:
        call.cancel()
    assert rejected.WhichOneof("message") == "error" and rejected.error.reason == "AFTER_END"
    assert rejected.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    request_id = dict(call.initial_metadata())[SESSION_KEY]
    assert wait_until_closed(closed_log, request_id).endswith("cancelled=True")


def test_a_caller_that_promised_end_and_stopped_without_it_is_gone_and_its_handler_sees_cancelled(client, closed_log):
    # grpc-python reads a cancel as the stream's end, like a half-close: the promise tells them apart.
    call = client.inference.Realtime(iter([open_message("/echo", sends_end=True), input_message('{"text": "a"}')]))
    with pytest.raises(grpc.RpcError) as ended:
        list(call)
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    request_id = dict(call.initial_metadata())[SESSION_KEY]
    assert wait_until_closed(closed_log, request_id).endswith("cancelled=True")


def test_a_call_must_open_first_and_name_a_hosted_realtime_endpoint(client):
    for messages in ([input_message('{"values": [1]}')], []):
        error = raw_call(client, messages)
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ferry.FerryError.from_rpc_error(error).reason == "OPEN_FIRST"
    refusals = (
        ("nope", "/invert", "UNKNOWN_APP"),
        ("live", "/nope", "UNKNOWN_ENDPOINT"),
        ("live", "/plain", "UNKNOWN_ENDPOINT"),
    )
    for app, path, reason in refusals:
        with pytest.raises(ferry.FerryError) as refused:
            client.realtime(app, path)  # refused when opening, before any input
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.NOT_FOUND, reason)
    assert "Run or Stream" in refused.value.message


def test_run_and_submit_on_a_realtime_path_are_not_found(client):
    with pytest.raises(ferry.FerryError) as refused:
        client.run("live", {"values": [1]}, path="/invert")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ferry.FerryError) as refused:
        client.submit("live", {"values": [1]}, path="/invert")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


# -- failures and vanishing callers ------------------------------------------------------------


def test_a_failing_handler_ends_the_call_internal_after_its_outputs_and_the_server_keeps_serving(client, closed_log):
    with client.realtime("live", "/fail") as live:
        live.send({"text": "fine"})
        live.send({"text": "boom"})
        live.send({"text": "never handled"})
        assert live.recv(timeout=10) == {"text": "fine", "count": 0}
        with pytest.raises(ferry.FerryError) as failed:
            live.recv(timeout=10)
        assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.INTERNAL, "HANDLER_FAILED")
        assert failed.value.message == "RuntimeError: model exploded on 'boom'"
        with pytest.raises(ferry.FerryError):
            live.recv(timeout=10)  # the end stays the end
        with pytest.raises(ferry.FerryError):
            live.send({"text": "late"})
        assert wait_until_closed(closed_log, live.request_id).endswith("cancelled=False")
    with client.realtime("live", "/invert") as live:
        live.send({"values": [1]})
        assert live.recv(timeout=10)["index"] == 0


def test_an_output_that_breaks_its_model_is_the_handlers_failure(client):
    with client.realtime("live", "/bad-output") as live:
        live.send({"text": "x"})
        with pytest.raises(ferry.FerryError) as failed:
            live.recv(timeout=10)
        assert failed.value.code == grpc.StatusCode.INTERNAL and "count" in failed.value.message


def test_a_cancelling_caller_closes_the_handler_promptly_and_the_server_keeps_serving(client, closed_log):
    live = client.realtime("live", "/echo")
    live.send({"text": "slow", "delay_seconds": 30})  # the handler is busy when the caller goes
    live.cancel()
    # Closed, not left to finish its 30 s sleep: the wait gives up long before that.
    assert wait_until_closed(closed_log, live.request_id, timeout=10).endswith("cancelled=True")
    with pytest.raises(ferry.FerryError) as cancelled:
        live.recv(timeout=5)
    assert cancelled.value.code == grpc.StatusCode.CANCELLED
    with client.realtime("live", "/echo") as again:
        again.send({"text": "next"})
        assert again.recv(timeout=10) == {"text": "next", "count": 1}


def test_a_caller_process_that_vanishes_mid_call_closes_the_handler(stack, client, closed_log):
    script = textwrap.dedent(
        f"""
        import time, ferry
        live = ferry.Client({stack.grpc_address!r}).realtime("live", "/echo")
        live.send({{"text": "a"}})
        live.recv(timeout=10)
        live.send({{"text": "b", "delay_seconds": 30}})
        print(live.request_id, flush=True)
        time.sleep(60)
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert caller.stdout is not None
        request_id = caller.stdout.readline().strip()
        assert request_id, "the caller never opened its call"
        time.sleep(0.3)
        caller.kill()  # no cancel, no goodbye: the connection just drops
    finally:
        caller.kill()
        caller.wait()
    assert wait_until_closed(closed_log, request_id).endswith("cancelled=True")
    with client.realtime("live", "/invert") as live:
        live.send({"values": [3]})
        assert live.recv(timeout=10)["values"] == [-3.0]


def test_realtime_calls_do_not_take_a_queue_slot(client):
    # The app's max_concurrency is 1: a session holding it would starve every queued request.
    with client.realtime("live", "/echo") as busy, client.realtime("live", "/invert") as other:
        busy.send({"text": "slow", "delay_seconds": 30})
        other.send({"values": [1]})
        assert other.recv(timeout=10)["index"] == 0
        response = client.inference.Run(
            inference_pb2.RunRequest(app_id="live", path="/plain", input_json='{"text": "q"}'), timeout=10
        )
        assert response.output_json == '{"text":"q","count":1}'


def test_two_threads_one_sending_one_receiving(client):
    received: queue.SimpleQueue[dict] = queue.SimpleQueue()
    with client.realtime("live", "/invert") as live:
        reader = threading.Thread(target=lambda: [received.put(o) for o in live])
        reader.start()
        for i in range(20):
            live.send({"values": [i]})
        live.close()
        reader.join(10)
    assert [received.get_nowait()["index"] for _ in range(20)] == list(range(20))


# -- asyncio -------------------------------------------------------------------------------------


async def test_the_async_twin_sends_receives_rejects_and_iterates(stack):
    async with ferry.AsyncClient(stack.grpc_address) as client, client.realtime("live", "/invert") as live:
        assert len(live.request_id) == 32
        with pytest.raises(TimeoutError):
            await live.recv(timeout=0.2)
        await live.send({"values": [1]})
        assert await live.recv(timeout=10) == {"values": [-1.0], "index": 0}, (
            "a timed-out recv does not lose the next output"
        )
        await live.send({"values": "x"})
        with pytest.raises(ferry.FerryError) as rejected:
            await live.recv(timeout=10)
        assert rejected.value.code == grpc.StatusCode.INVALID_ARGUMENT
        for i in range(5):
            await live.send({"values": [i]})
        await live.close()
        assert [output["index"] async for output in live] == [1, 2, 3, 4, 5]
        with pytest.raises(EOFError):
            await live.recv()


async def test_the_async_twin_refuses_at_open_reports_failures_and_cancels(stack, closed_log):
    async with ferry.AsyncClient(stack.grpc_address) as client:
        with pytest.raises(ferry.FerryError) as refused:
            await client.realtime("nope", "/invert")
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
        async with client.realtime("live", "/fail") as live:
            await live.send({"text": "boom"})
            with pytest.raises(ferry.FerryError) as failed:
                await live.recv(timeout=10)
            assert failed.value.code == grpc.StatusCode.INTERNAL
            await live.close()  # the call has ended: closing it raises nothing
        live = await client.realtime("live", "/echo")
        await live.send({"text": "slow", "delay_seconds": 30})
        live.cancel()
        with pytest.raises(ferry.FerryError) as cancelled:
            await live.recv()
        assert cancelled.value.code == grpc.StatusCode.CANCELLED
        # the loop must run to send the cancel
        closed = await asyncio.to_thread(wait_until_closed, closed_log, live.request_id)
        assert closed.endswith("cancelled=True")
