"""The runner in-process, against a fake of its service clients: queue, slots, cancellation, time limits, media.

`AppRunner` is driven as `inference/servicer.py` drives it (submit, position,
cancel, events), with the DownloaderService and the EncoderService replaced at
the seam the runner defines (`ServiceClients`, faked in `fake_services.py`),
the way cog tests its runner against a fake worker. Handlers note what they do
in a timeline the fake writes to as well, and wait while the test holds their
request, so every ordering below is observed, never timed. The same runner
behind `ferry serve`, with real services: test_runner_stack.py and
test_runner_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import grpc
import numpy as np
import pytest
from pydantic import BaseModel

from ferry.errors import FerryError, InvalidArgument, PermissionDenied, Unavailable
from ferry.inference import App, Encode, RequestContext, endpoint
from ferry.inference.runner import COMPLETED, IN_PROGRESS, QUEUED, AppRunner, RequestRecord
from ferry.request_scope import current_scope
from ferry.toolkit import Image
from ferry.v1 import inference_pb2
from tests.inference.fake_services import Encode as EncodeCall
from tests.inference.fake_services import FakeServices

WAIT_SECONDS = 10.0  # how long a test waits for something that should happen at once before it fails
SOURCE = "http://source.test"


class Board:
    """Where the test's handlers note what they do, and where they wait while the test holds their request."""

    def __init__(self, timeline: list[str]) -> None:
        self.timeline = timeline
        self._held: set[str] = set()

    def hold(self, *names: str) -> None:
        self._held.update(names)

    def release(self, name: str) -> None:
        self._held.discard(name)

    def release_all(self) -> None:
        self._held.clear()

    def holds(self, name: str) -> bool:
        return name in self._held

    def note(self, entry: str) -> None:
        self.timeline.append(entry)

    async def reached(self, entry: str) -> None:
        await until(lambda: entry in self.timeline, f"{entry!r} in the timeline {self.timeline}")


async def until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT_SECONDS:g} s for {what}")
        await asyncio.sleep(0.001)


# -- the app under test ---------------------------------------------------------------


class Job(BaseModel):
    name: str
    image_url: str = ""
    image_urls: list[str] = []


class Done(BaseModel):
    name: str
    # What the handler found: each media input field's downloaded files, read back.
    inputs: dict[str, list[str]] = {}
    # What the SDK's calls inside the handler would follow (the request scope).
    scope_urls: list[str] = []
    scope_expires_in: int | None = None


class Painted(BaseModel):
    image: Image  # png by default
    preview: Annotated[Image, Encode("jpeg", quality=80)]


class BoardApp(App):
    """Handlers that note when they start and return, and wait while the test holds their request's name."""

    board: Board  # handed in by the `start` fixture before setup() runs

    def setup(self) -> None:
        self.stack_at_setup = current_scope().stack

    @endpoint("/")
    def work(self, job: Job, context: RequestContext) -> Done:
        self.board.note(f"handler {job.name}")
        while self.board.holds(job.name):
            context.raise_if_cancelled()
            time.sleep(0.001)
        return self._done(job, context)

    @endpoint("/async")
    async def work_async(self, job: Job, context: RequestContext) -> Done:
        self.board.note(f"handler {job.name}")
        try:
            while self.board.holds(job.name):  # noqa: ASYNC110 (polls as a model's step loop would: cancellation lands in the sleep)
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            self.board.note(f"handler {job.name} cancelled")
            raise
        return self._done(job, context)

    @endpoint("/uninterruptible")
    def work_uninterruptibly(self, job: Job, context: RequestContext) -> Done:
        """One step that cannot stop halfway (a call into the GPU): it sees the cancel, and returns once released."""
        self.board.note(f"handler {job.name}")
        while self.board.holds(job.name):
            if context.cancelled and f"handler {job.name} saw the cancel" not in self.board.timeline:
                self.board.note(f"handler {job.name} saw the cancel")
            time.sleep(0.001)
        self.board.note(f"handler {job.name} stopped")
        context.raise_if_cancelled()
        return self._done(job, context)

    @endpoint("/paint")
    def paint(self, job: Job, context: RequestContext) -> Painted:
        self.board.note(f"handler {job.name}")
        self.board.note(f"returned {job.name}")
        tensor = np.zeros((4, 6, 3), np.uint8)
        return Painted.model_construct(image=tensor, preview=tensor)  # tensors for the runner to encode

    @endpoint("/chatty")
    def chat(self, job: Job, context: RequestContext) -> Done:
        context.progress(1, 2, "half")
        context.log("halfway")
        context.partial({"step": 1})
        context.progress(2, 2)
        return Done(name=job.name)

    @endpoint("/crash")
    def crash(self, job: Job) -> Done:
        raise RuntimeError(f"model exploded on {job.name!r}")

    @endpoint("/refuse")
    def refuse(self, job: Job) -> Done:
        raise InvalidArgument("width must be a multiple of 8", reason="BAD_WIDTH")

    @endpoint("/bad-output")
    def bad_output(self, job: Job) -> Done:
        return {"nonsense": job.name}  # type: ignore[return-value]  # what the runner must refuse

    def _done(self, job: Job, context: RequestContext) -> Done:
        inputs = {
            field: [path.read_text() for path in (files if isinstance(files, list) else [files])]
            for field, files in context.input_files.items()
        }
        scope = current_scope()
        self.board.note(f"returned {job.name}")
        return Done(
            name=job.name, inputs=inputs, scope_urls=sorted(scope.downloaded), scope_expires_in=scope.expires_in
        )


class OneSlot(BoardApp):
    app_id = "one-slot"
    max_concurrency = 1


class TwoSlots(BoardApp):
    app_id = "two-slots"
    max_concurrency = 2


class TimeLimited(BoardApp):
    app_id = "time-limited"
    max_concurrency = 1
    request_timeout_seconds = 0.1


class OwnDownloads(BoardApp):
    app_id = "own-downloads"
    download_inputs = False


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def timeline() -> list[str]:
    return []


@pytest.fixture
def board(timeline: list[str]) -> Board:
    return Board(timeline)


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


@pytest.fixture
def services(downloads: Path, timeline: list[str]) -> FakeServices:
    return FakeServices(downloads, timeline)


Start = Callable[..., Awaitable[AppRunner]]


@pytest.fixture
async def start(board: Board, services: FakeServices) -> AsyncIterator[Start]:
    """Start a runner of an app class on the fake services; every runner is stopped and its tasks ended afterwards."""
    threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="handler")
    runners: list[AppRunner] = []

    async def start_runner(app_class: type[BoardApp], **options: Any) -> AppRunner:
        runner = AppRunner(app_class, workers=threads, services=services, **options)  # the fake, at the seam
        runner.app.board = board
        await runner.start()
        runners.append(runner)
        return runner

    yield start_runner
    board.release_all()
    for runner in runners:
        await runner.stop()
        tasks = [
            task for record in runner.records.values() for task in (record.task, record.prefetch) if task is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    threads.shutdown(wait=True)


def submit(
    runner: AppRunner, name: str, path: str = "/", expires_in: int | None = None, **fields: Any
) -> RequestRecord:
    return runner.submit(path, json.dumps({"name": name, **fields}), expires_in)


async def finished(*records: RequestRecord) -> None:
    await asyncio.wait_for(asyncio.gather(*(record.finished.wait() for record in records)), WAIT_SECONDS)


def output(record: RequestRecord) -> dict[str, Any]:
    assert record.error is None, f"the request failed: {record.error}"
    result: dict[str, Any] = json.loads(record.output_json)
    return result


def status(record: RequestRecord) -> tuple[grpc.StatusCode, str]:
    assert record.error is not None, "the request did not fail"
    return record.error.code, record.error.reason


def handlers_started(timeline: list[str]) -> list[str]:
    """The names of the requests whose handlers started, in order."""
    return [words[1] for entry in timeline if (words := entry.split())[0] == "handler" and len(words) == 2]


def most_at_once(timeline: list[str]) -> int:
    """The most handlers that were between starting and returning at the same time."""
    running = most = 0
    for words in (entry.split() for entry in timeline):
        if len(words) == 2:
            running += {"handler": 1, "returned": -1}.get(words[0], 0)
            most = max(most, running)
    return most


class Listener:
    """Everything `runner.events(record)` yields, gathered as it comes, as a streaming caller receives it."""

    def __init__(self, runner: AppRunner, record: RequestRecord) -> None:
        self.heard: list[inference_pb2.StreamResponse] = []
        self._task = asyncio.create_task(self._listen(runner, record))

    async def _listen(self, runner: AppRunner, record: RequestRecord) -> None:
        async for response in runner.events(record):
            self.heard.append(response)

    def kinds(self) -> list[str]:
        return [str(response.WhichOneof("event")) for response in self.heard]

    def positions(self) -> list[int]:
        return [response.queued.position for response in self.heard if response.HasField("queued")]

    async def to_the_end(self) -> None:
        await asyncio.wait_for(self._task, WAIT_SECONDS)


# -- the queue ---------------------------------------------------------------------------------


async def test_with_one_slot_requests_run_one_at_a_time_in_the_order_they_were_submitted(
    start: Start, board: Board, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    board.hold("first")
    records = [submit(runner, name) for name in ("first", "second", "third", "fourth")]
    await board.reached("handler first")

    assert [record.state for record in records] == [IN_PROGRESS, QUEUED, QUEUED, QUEUED]
    board.release("first")
    await finished(*records)

    assert timeline == [
        entry for name in ("first", "second", "third", "fourth") for entry in (f"handler {name}", f"returned {name}")
    ]
    assert [output(record)["name"] for record in records] == ["first", "second", "third", "fourth"]


async def test_a_waiting_request_knows_its_place_and_hears_each_move_up(start: Start, board: Board) -> None:
    runner = await start(OneSlot)
    board.hold("running")
    running = submit(runner, "running")
    await board.reached("handler running")
    waiting = [submit(runner, name) for name in ("a", "b", "c")]

    assert [runner.position(record) for record in waiting] == [0, 1, 2]
    assert runner.position(running) == 0, "a running request waits for nothing"
    last = Listener(runner, waiting[2])
    await until(lambda: last.heard, "the listener to hear where it stands")
    board.release("running")
    await last.to_the_end()

    assert last.positions() == [2, 1, 0]
    assert last.kinds() == ["queued", "queued", "queued", "in_progress", "completed"]


async def test_no_more_handlers_run_at_once_than_max_concurrency(
    start: Start, board: Board, timeline: list[str]
) -> None:
    runner = await start(TwoSlots)
    board.hold("a", "b", "c", "d")
    records = [submit(runner, name) for name in "abcd"]
    await board.reached("handler b")

    assert [record.state for record in records] == [IN_PROGRESS, IN_PROGRESS, QUEUED, QUEUED]
    assert [runner.position(record) for record in records[2:]] == [0, 1]
    board.release("b")
    await board.reached("handler c")
    assert records[3].state == QUEUED, "b's slot went to c alone"
    board.release_all()
    await finished(*records)

    assert most_at_once(timeline) == 2
    assert [output(record)["name"] for record in records] == ["a", "b", "c", "d"]


async def test_only_the_latest_finished_requests_are_remembered(start: Start) -> None:
    runner = await start(OneSlot, keep_finished=2)
    done = [submit(runner, str(number)) for number in range(3)]
    await finished(*done)

    latest = submit(runner, "latest")

    assert set(runner.records) == {done[1].request_id, done[2].request_id, latest.request_id}


# -- cancellation --------------------------------------------------------------------------------


async def test_a_cancelled_waiting_request_leaves_the_queue_and_the_rest_close_up_behind_it(
    start: Start, board: Board, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    board.hold("running")
    submit(runner, "running")
    await board.reached("handler running")
    first, cancelled, last = (submit(runner, name) for name in ("first", "cancelled", "last"))
    listener = Listener(runner, last)
    await until(lambda: listener.heard, "the listener to hear where it stands")

    assert runner.cancel(cancelled) == (QUEUED, True)

    assert cancelled.state == COMPLETED and status(cancelled) == (grpc.StatusCode.CANCELLED, "CANCELLED")
    assert [runner.position(record) for record in (first, last)] == [0, 1]
    await until(lambda: listener.positions() == [2, 1], "the one behind it to hear it moved up")
    board.release("running")
    await finished(first, last)
    assert handlers_started(timeline) == ["running", "first", "last"]


async def test_cancelling_a_running_async_handler_cancels_it_and_frees_its_slot(
    start: Start, board: Board, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    board.hold("slow")
    slow = submit(runner, "slow", "/async")
    following = submit(runner, "following")
    await board.reached("handler slow")

    assert runner.cancel(slow) == (IN_PROGRESS, True)
    assert runner.cancel(slow) == (COMPLETED, False), "cancelling twice changes nothing"
    await finished(following)

    assert status(slow) == (grpc.StatusCode.CANCELLED, "CANCELLED")
    assert timeline.index("handler slow cancelled") < timeline.index("handler following")
    assert output(following)["name"] == "following"


async def test_a_cancelled_sync_handler_is_told_through_its_context_and_holds_its_slot_until_its_thread_returns(
    start: Start, board: Board, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    board.hold("stubborn")
    stubborn = submit(runner, "stubborn", "/uninterruptible")
    following = submit(runner, "following")
    await board.reached("handler stubborn")

    assert runner.cancel(stubborn) == (IN_PROGRESS, True)
    assert status(stubborn) == (grpc.StatusCode.CANCELLED, "CANCELLED"), "the caller hears at once"
    await board.reached("handler stubborn saw the cancel")
    await asyncio.sleep(0.05)  # the loop turns a few hundred times: the slot is still the stubborn thread's
    assert following.state == QUEUED and "handler following" not in timeline
    board.release("stubborn")
    await finished(following)

    assert timeline.index("handler stubborn stopped") < timeline.index("handler following")
    assert output(following)["name"] == "following"


async def test_a_finished_request_cannot_be_cancelled(start: Start) -> None:
    runner = await start(OneSlot)
    done = submit(runner, "done")
    await finished(done)

    assert runner.cancel(done) == (COMPLETED, False)
    assert output(done)["name"] == "done"


async def test_cancelling_the_next_request_in_line_stops_its_input_downloads(
    start: Start, board: Board, services: FakeServices, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    url = services.client.serve(f"{SOURCE}/a.png", b"pixels")
    services.client.hold(url)
    board.hold("running")
    submit(runner, "running")
    await board.reached("handler running")
    waiting = submit(runner, "waiting", image_url=url)
    await board.reached(f"download {url}")

    runner.cancel(waiting)

    await board.reached(f"download {url} cancelled")
    assert "handler waiting" not in timeline


async def test_cancelling_the_next_request_in_line_deletes_the_inputs_it_already_downloaded(
    start: Start, board: Board, services: FakeServices, downloads: Path
) -> None:
    runner = await start(OneSlot)
    url = services.client.serve(f"{SOURCE}/a.png", b"pixels")
    board.hold("running")
    submit(runner, "running")
    await board.reached("handler running")
    waiting = submit(runner, "waiting", image_url=url)
    await board.reached(f"downloaded {url}")
    assert [path.name for path in downloads.rglob("*.png")] == ["a.png"]

    runner.cancel(waiting)

    assert list(downloads.iterdir()) == []


async def test_stopping_the_runner_fails_every_unfinished_request_as_cancelled(start: Start, board: Board) -> None:
    runner = await start(OneSlot)
    board.hold("running")
    running = submit(runner, "running")
    await board.reached("handler running")
    waiting = submit(runner, "waiting")

    await runner.stop()

    for record in (running, waiting):
        assert status(record) == (grpc.StatusCode.CANCELLED, "CANCELLED")
        assert record.error is not None and "shutting down" in record.error.message


# -- time limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/async"], ids=["sync", "async"])
async def test_a_request_past_the_apps_time_limit_fails_deadline_exceeded_and_frees_its_slot(
    start: Start, board: Board, path: str
) -> None:
    runner = await start(TimeLimited)
    board.hold("endless")
    endless = submit(runner, "endless", path)
    following = submit(runner, "following")
    await finished(endless, following)

    assert status(endless) == (grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_TIMEOUT")
    assert output(following)["name"] == "following"


async def test_the_time_limit_counts_the_input_downloads_too(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    runner = await start(TimeLimited)
    url = services.client.serve(f"{SOURCE}/slow.png", b"pixels")
    services.client.hold(url)

    late = submit(runner, "late", image_url=url)
    await finished(late)

    assert status(late) == (grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_TIMEOUT")
    assert f"download {url} cancelled" in timeline and "handler late" not in timeline


# -- media in ------------------------------------------------------------------------------------


async def test_the_next_requests_inputs_download_while_the_previous_handler_runs(
    start: Start, board: Board, services: FakeServices, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    url = services.client.serve(f"{SOURCE}/cat.png", b"cat pixels")
    board.hold("first")
    first = submit(runner, "first")
    await board.reached("handler first")
    second = submit(runner, "second", image_url=url)

    await board.reached(f"downloaded {url}")
    assert first.state == IN_PROGRESS, "the download did not wait for the slot"
    board.release("first")
    await finished(second)

    assert timeline.index(f"downloaded {url}") < timeline.index("returned first")
    assert output(second)["inputs"] == {"image_url": ["cat pixels"]}


async def test_each_url_downloads_once_the_handler_and_its_sdk_calls_find_the_files_and_they_go_afterwards(
    start: Start, services: FakeServices, timeline: list[str], downloads: Path
) -> None:
    runner = await start(OneSlot)
    a = services.client.serve(f"{SOURCE}/a.txt", b"a")
    b = services.client.serve(f"{SOURCE}/b.txt", b"b")

    record = submit(runner, "many", image_url=a, image_urls=[a, b, a])
    await finished(record)

    assert output(record)["inputs"] == {"image_url": ["a"], "image_urls": ["a", "b", "a"]}
    assert output(record)["scope_urls"] == [a, b], "ferry.download_file in the handler answers from these"
    assert sorted(entry for entry in timeline if entry.startswith("download ")) == [f"download {a}", f"download {b}"]
    assert list(downloads.iterdir()) == [], "the inputs are deleted once the request is over"


async def test_a_refused_input_fails_the_request_with_the_downloaders_status_before_the_handler_runs(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    blocked = services.client.refuse(
        "http://10.0.0.1/secret.png", PermissionDenied("blocked address", reason="ADDRESS_BLOCKED")
    )
    slow = services.client.serve(f"{SOURCE}/slow.png", b"pixels")
    services.client.hold(slow)

    record = submit(runner, "blocked", image_url=blocked, image_urls=[slow])
    await finished(record)

    assert status(record) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")
    assert f"download {slow} cancelled" in timeline, "the first failure stops the other downloads"
    assert "handler blocked" not in timeline


async def test_an_app_that_downloads_its_own_inputs_gets_its_urls_untouched(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    runner = await start(OwnDownloads)
    url = services.client.serve(f"{SOURCE}/a.png", b"pixels")

    record = submit(runner, "own", image_url=url)
    await finished(record)

    assert output(record)["inputs"] == {}
    assert not any(entry.startswith("download") for entry in timeline)


# -- media out -----------------------------------------------------------------------------------


async def test_tensors_in_media_fields_are_encoded_with_each_fields_options_and_the_requests_lifetime(
    start: Start, services: FakeServices
) -> None:
    runner = await start(OneSlot)

    record = submit(runner, "painted", "/paint", expires_in=600)
    await finished(record)

    assert services.client.encodes == [
        EncodeCall((4, 6, 3), "png", {"expires_in": 600}),
        EncodeCall((4, 6, 3), "jpeg", {"quality": 80, "expires_in": 600}),
    ]
    image, preview = output(record)["image"], output(record)["preview"]
    assert (image["content_type"], image["width"], image["height"]) == ("image/png", 6, 4)
    assert preview["content_type"] == "image/jpeg" and preview["url"].endswith("/out.jpeg")


async def test_outputs_encode_after_the_handler_has_given_its_slot_to_the_next_request(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    runner = await start(OneSlot)
    services.client.hold_encodes()
    painted = submit(runner, "painted", "/paint")
    following = submit(runner, "following")

    await finished(following)
    assert painted.state == IN_PROGRESS, "its outputs are still encoding"
    services.client.release_encodes()
    await finished(painted)

    assert timeline.index("returned painted") < timeline.index("encode png") < timeline.index("handler following")
    assert timeline.index("returned following") < timeline.index("encoded png")
    assert output(painted)["image"]["content_type"] == "image/png"


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (InvalidArgument("the tensor holds NaN", reason="NON_FINITE"), (grpc.StatusCode.INTERNAL, "NON_FINITE")),
        (Unavailable("no encoder answers", reason="ENCODER_DOWN"), (grpc.StatusCode.UNAVAILABLE, "ENCODER_DOWN")),
    ],
    ids=["a refused tensor is the apps bug", "an encoder that is down stays unavailable"],
)
async def test_an_encode_that_fails_fails_the_request(
    start: Start, services: FakeServices, refusal: FerryError, expected: tuple[grpc.StatusCode, str]
) -> None:
    runner = await start(OneSlot)
    services.client.refuse_encodes(refusal)

    record = submit(runner, "painted", "/paint")
    await finished(record)

    assert status(record) == expected
    assert record.error is not None and refusal.message in record.error.message


# -- failures and events --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected", "message"),
    [
        ("/crash", (grpc.StatusCode.INTERNAL, "HANDLER_FAILED"), "RuntimeError: model exploded on 'x'"),
        ("/refuse", (grpc.StatusCode.INVALID_ARGUMENT, "BAD_WIDTH"), "width must be a multiple of 8"),
        ("/bad-output", (grpc.StatusCode.INTERNAL, "BAD_OUTPUT"), "does not match its model"),
    ],
    ids=["a crash is internal", "an app's own status passes through", "an output off its model is internal"],
)
async def test_a_failing_handler_fails_its_request_with_a_status_and_the_runner_keeps_serving(
    start: Start, path: str, expected: tuple[grpc.StatusCode, str], message: str
) -> None:
    runner = await start(OneSlot)

    failed = submit(runner, "x", path)
    following = submit(runner, "following")
    await finished(failed, following)

    assert status(failed) == expected
    assert failed.error is not None and message in failed.error.message
    assert output(following)["name"] == "following"


async def test_unknown_endpoints_and_malformed_inputs_are_refused_when_submitted(start: Start) -> None:
    runner = await start(OneSlot)

    with pytest.raises(FerryError) as unknown:
        runner.submit("/nope", json.dumps({"name": "x"}))
    with pytest.raises(FerryError) as malformed:
        runner.submit("/", json.dumps({"name": 3}))

    assert (unknown.value.code, unknown.value.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_ENDPOINT")
    assert malformed.value.code == grpc.StatusCode.INVALID_ARGUMENT and "name" in malformed.value.message
    assert runner.records == {}


async def test_a_listener_hears_where_the_request_stands_its_progress_logs_and_partial_outputs_then_its_output(
    start: Start, board: Board
) -> None:
    runner = await start(OneSlot)
    board.hold("running")
    submit(runner, "running")
    await board.reached("handler running")
    record = submit(runner, "chatty", "/chatty")
    listener = Listener(runner, record)
    await until(lambda: listener.heard, "the listener to hear where it stands")
    board.release("running")
    await listener.to_the_end()

    heard = listener.heard
    assert listener.kinds() == [
        "queued",
        "in_progress",
        "in_progress",
        "in_progress",
        "partial_output",
        "in_progress",
        "completed",
    ]
    assert (heard[2].in_progress.progress.current, heard[2].in_progress.progress.total) == (1, 2)
    assert heard[2].in_progress.progress.message == "half"
    assert [(line.level, line.message) for line in heard[3].in_progress.logs] == [("INFO", "halfway")]
    assert json.loads(heard[4].partial_output.output_json) == {"step": 1}
    assert json.loads(heard[6].completed.output_json)["name"] == "chatty"
    assert {response.request_id for response in heard} == {record.request_id}


async def test_setup_and_handlers_reach_the_stack_hosting_the_app_and_handlers_the_requests_lifetime(
    start: Start, services: FakeServices
) -> None:
    runner = await start(OneSlot)

    record = submit(runner, "scoped", expires_in=600)
    await finished(record)

    assert runner.app.stack_at_setup is services.target
    assert output(record)["scope_expires_in"] == 600
