"""The runner in-process, against a fake of its service clients: queue, slots, cancellation, time limits, media.

`AppRunner` runs what it takes from a `SqliteQueue` on a file under the test's
tmp_path, and each test drives it as `inference/servicer.py` does: through a
`Requests` front over that queue (submit, status, position, cancel, events,
results). The DownloaderService and the EncoderService are replaced at the seam
the runner defines (`ServiceClients`, faked in `fake_services.py`), the way cog
tests its runner against a fake worker. Handlers note what they do in a timeline
the fake writes to as well, and wait while the test holds their request, so
every ordering below is observed, never timed. A second queue object on the same
file is what another replica (or this one, restarted) would hold. The same
runner behind `ferry serve`, with real services: test_runner_stack.py and
test_runner_faults.py; the queue's own contract: tests/inference/queue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import numpy as np
import pytest
from pydantic import BaseModel

from ferry.errors import Cancelled, FerryError, InvalidArgument, PermissionDenied, Unavailable
from ferry.inference import App, Encode, RequestContext, endpoint
from ferry.inference.queue.base import DEFAULT_LEASE_SECONDS, Failure, NewRequest, State
from ferry.inference.queue.sqlite import SqliteQueue
from ferry.inference.requests import Requests
from ferry.inference.runner import AppRunner
from ferry.inference.servicer import stream_response
from ferry.request_scope import current_scope
from ferry.toolkit import Image
from ferry.v1 import inference_pb2
from tests.harness import until
from tests.inference.fake_services import Encode as EncodeCall
from tests.inference.fake_services import FakeServices

WAIT_SECONDS = 10.0  # how long a test waits for something that should happen at once before it fails
SOURCE = "http://source.test"
# A lease short enough that a restarted replica takes back an interrupted request within the test.
SHORT_LEASE_SECONDS = 0.3


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


OpenQueue = Callable[..., Awaitable[SqliteQueue]]


@pytest.fixture
async def open_queue(tmp_path: Path) -> AsyncIterator[OpenQueue]:
    """Open a queue object on the test's one SQLite file, as each replica (each process) holds its own; all are
    closed afterwards."""
    opened: list[SqliteQueue] = []

    async def open_one(**settings: Any) -> SqliteQueue:
        opened.append(await SqliteQueue.open(tmp_path / "queue.sqlite3", **settings))
        return opened[-1]

    yield open_one
    for queue in opened:
        await queue.close()


@dataclass(frozen=True)
class Replica:
    """One inference replica: its queue object, the runner taking from it, and the front the servicer would use."""

    queue: SqliteQueue
    runner: AppRunner
    front: Requests


@dataclass(frozen=True)
class Handle:
    """A submitted request as its caller holds it: its id, and the front it asks about it."""

    request_id: str
    front: Requests


Start = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start(board: Board, services: FakeServices, open_queue: OpenQueue) -> AsyncIterator[Start]:
    """Start a replica running an app class on the fake services; every runner is stopped afterwards (before
    `open_queue` closes the queues)."""
    threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="handler")
    runners: list[AppRunner] = []

    async def start_replica(app_class: type[BoardApp], lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Replica:
        queue = await open_queue(lease_seconds=lease_seconds)
        runner = AppRunner(  # the fake services, at the seam
            app_class, queue=queue, workers=threads, services=services
        )
        runner.app.board = board
        await runner.start()
        runners.append(runner)
        return Replica(queue, runner, Requests(queue, {runner.app_id: runner}))

    yield start_replica
    board.release_all()
    for runner in runners:
        await runner.stop()
    threads.shutdown(wait=True)


async def submit(replica: Replica, name: str, path: str = "/", expires_in: int | None = None, **fields: Any) -> Handle:
    input_json = json.dumps({"name": name, **fields})
    request = NewRequest(replica.runner.app_id, path, input_json, expires_in)
    return Handle(await replica.front.submit(request), replica.front)


async def hold_running(replica: Replica, board: Board, name: str, path: str = "/") -> Handle:
    """Submits `name` and waits until its handler runs, held there by the board until released."""
    board.hold(name)
    handle = await submit(replica, name, path)
    await board.reached(f"handler {name}")
    return handle


async def finished(*handles: Handle) -> None:
    outcomes = (handle.front.outcome(handle.request_id) for handle in handles)
    await asyncio.wait_for(asyncio.gather(*outcomes), WAIT_SECONDS)


async def state(handle: Handle) -> State:
    return (await handle.front.queue.status(handle.request_id)).state


async def states(*handles: Handle) -> list[State]:
    return [await state(handle) for handle in handles]


async def position(handle: Handle) -> int:
    return (await handle.front.queue.status(handle.request_id)).position


async def output(handle: Handle) -> dict[str, Any]:
    """The completed request's output, as GetResult answers it (its failure raised as the FerryError it was)."""
    result: dict[str, Any] = json.loads(await handle.front.result(handle.request_id, wait=False))
    return result


async def failure(handle: Handle) -> Failure:
    recorded = (await handle.front.queue.status(handle.request_id)).failure
    assert recorded is not None, "the request did not fail"
    return recorded


async def status(handle: Handle) -> tuple[grpc.StatusCode, str]:
    """The failed request's status code and reason, as a caller receives them (no reason: the code's name)."""
    recorded = await failure(handle)
    code = grpc.StatusCode[recorded.code]
    return code, recorded.reason or code.name


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
    """Everything `Requests.events` yields for a request, gathered as it comes, as a streaming caller receives it."""

    def __init__(self, handle: Handle) -> None:
        self.heard: list[inference_pb2.StreamResponse] = []
        self._task = asyncio.create_task(self._listen(handle))

    async def _listen(self, handle: Handle) -> None:
        async for event in handle.front.events(handle.request_id):
            self.heard.append(stream_response(handle.request_id, event))

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
    replica = await start(OneSlot)
    board.hold("first")
    handles = [await submit(replica, name) for name in ("first", "second", "third", "fourth")]
    await board.reached("handler first")

    assert await states(*handles) == [State.IN_PROGRESS, State.QUEUED, State.QUEUED, State.QUEUED]
    board.release("first")
    await finished(*handles)

    assert timeline == [
        entry for name in ("first", "second", "third", "fourth") for entry in (f"handler {name}", f"returned {name}")
    ]
    assert [(await output(handle))["name"] for handle in handles] == ["first", "second", "third", "fourth"]


async def test_a_waiting_request_knows_its_place_and_hears_each_move_up_that_lasts(start: Start, board: Board) -> None:
    """Positions are read from the queue (a stream re-reads its place every 0.1 s): a place that stands until the
    stream has read it is heard; places quicker than that may be skipped, and the ones heard only ever go down."""
    replica = await start(OneSlot)
    board.hold("a", "b")
    running = await hold_running(replica, board, "running")
    waiting = [await submit(replica, name) for name in ("a", "b", "c")]

    assert [await position(handle) for handle in waiting] == [0, 1, 2]
    assert await position(running) == 0, "a running request waits for nothing"
    last = Listener(waiting[2])
    await until(lambda: last.positions() == [2], "the listener to hear where it stands")
    board.release("running")
    await until(lambda: last.positions() == [2, 1], "the listener to hear it moved up to 1")
    board.release("a")
    await until(lambda: last.positions() == [2, 1, 0], "the listener to hear it moved up to 0")
    board.release("b")
    await last.to_the_end()

    assert last.positions() == [2, 1, 0]
    assert last.kinds() == ["queued", "queued", "queued", "in_progress", "completed"]


async def test_a_stream_opened_on_a_queue_that_moves_at_once_hears_its_places_go_down_then_its_run(
    start: Start, board: Board
) -> None:
    replica = await start(OneSlot)
    await hold_running(replica, board, "running")
    waiting = [await submit(replica, name) for name in ("a", "b", "c")]
    last = Listener(waiting[2])
    await until(lambda: last.heard, "the listener to hear where it stands")
    board.release("running")
    await last.to_the_end()

    positions = last.positions()
    assert positions[0] == 2
    assert all(later < earlier for earlier, later in itertools.pairwise(positions))
    assert last.kinds() == ["queued"] * len(positions) + ["in_progress", "completed"]


async def test_no_more_handlers_run_at_once_than_max_concurrency(
    start: Start, board: Board, timeline: list[str]
) -> None:
    replica = await start(TwoSlots)
    board.hold("a", "b", "c", "d")
    handles = [await submit(replica, name) for name in "abcd"]
    await board.reached("handler b")

    assert await states(*handles) == [State.IN_PROGRESS, State.IN_PROGRESS, State.QUEUED, State.QUEUED]
    assert [await position(handle) for handle in handles[2:]] == [0, 1]
    board.release("b")
    await board.reached("handler c")
    assert await state(handles[3]) == State.QUEUED, "b's slot went to c alone"
    board.release_all()
    await finished(*handles)

    assert most_at_once(timeline) == 2
    assert [(await output(handle))["name"] for handle in handles] == ["a", "b", "c", "d"]


async def test_a_finished_requests_result_outlives_the_runner_that_ran_it(start: Start, open_queue: OpenQueue) -> None:
    replica = await start(OneSlot)
    done = await submit(replica, "done")
    await finished(done)

    await replica.runner.stop()

    assert await state(done) == State.COMPLETED
    assert (await output(done))["name"] == "done"
    elsewhere = Handle(done.request_id, Requests(await open_queue(), {}))  # a replica that never hosted the app
    assert (await output(elsewhere))["name"] == "done", "the result lives in the queue, not in the runner"


# -- cancellation --------------------------------------------------------------------------------


async def held_with_one_behind(start: Start, board: Board, name: str, path: str) -> tuple[Replica, Handle, Handle]:
    """A one-slot replica whose slot `name`'s handler at `path` holds (until the board releases it), and a request
    queued behind it, named following."""
    replica = await start(OneSlot)
    running = await hold_running(replica, board, name, path)
    return replica, running, await submit(replica, "following")


async def assert_following_ran_after(entry: str, following: Handle, timeline: list[str]) -> None:
    """The request queued behind started only after `entry` was noted (its slot free by then), and returned."""
    assert timeline.index(entry) < timeline.index("handler following")
    assert (await output(following))["name"] == "following"


async def test_a_cancelled_waiting_request_leaves_the_queue_and_the_rest_close_up_behind_it(
    start: Start, board: Board, timeline: list[str]
) -> None:
    replica = await start(OneSlot)
    await hold_running(replica, board, "running")
    first, cancelled, last = [await submit(replica, name) for name in ("first", "cancelled", "last")]
    listener = Listener(last)
    await until(lambda: listener.heard, "the listener to hear where it stands")

    assert await replica.front.cancel(cancelled.request_id) == (State.QUEUED, True)

    assert await state(cancelled) == State.COMPLETED
    assert await status(cancelled) == (grpc.StatusCode.CANCELLED, "CANCELLED")
    assert [await position(handle) for handle in (first, last)] == [0, 1]
    await until(lambda: listener.positions() == [2, 1], "the one behind it to hear it moved up")
    board.release("running")
    await finished(first, last)
    await listener.to_the_end()
    assert handlers_started(timeline) == ["running", "first", "last"]


async def test_cancelling_a_running_async_handler_cancels_it_and_frees_its_slot(
    start: Start, board: Board, timeline: list[str]
) -> None:
    replica, slow, following = await held_with_one_behind(start, board, "slow", "/async")

    assert await replica.front.cancel(slow.request_id) == (State.IN_PROGRESS, True)
    assert await replica.front.cancel(slow.request_id) == (State.COMPLETED, False), "cancelling twice changes nothing"
    await finished(following)

    assert await status(slow) == (grpc.StatusCode.CANCELLED, "CANCELLED")
    await assert_following_ran_after("handler slow cancelled", following, timeline)


async def test_a_request_cancelled_through_another_replica_stops_its_handler_on_the_replica_running_it(
    start: Start, open_queue: OpenQueue, board: Board, timeline: list[str]
) -> None:
    _, slow, following = await held_with_one_behind(start, board, "slow", "/async")
    other = Requests(await open_queue(), {})  # another replica's front, on its own queue object

    assert await other.cancel(slow.request_id) == (State.IN_PROGRESS, True)

    await board.reached("handler slow cancelled")
    await finished(following)
    assert await status(slow) == (grpc.StatusCode.CANCELLED, "CANCELLED")
    await assert_following_ran_after("handler slow cancelled", following, timeline)


async def test_a_cancelled_sync_handler_is_told_through_its_context_and_holds_its_slot_until_its_thread_returns(
    start: Start, board: Board, timeline: list[str]
) -> None:
    replica, stubborn, following = await held_with_one_behind(start, board, "stubborn", "/uninterruptible")

    assert await replica.front.cancel(stubborn.request_id) == (State.IN_PROGRESS, True)
    assert await status(stubborn) == (grpc.StatusCode.CANCELLED, "CANCELLED"), "the caller hears at once"
    await board.reached("handler stubborn saw the cancel")
    await asyncio.sleep(0.05)  # the loop turns a few hundred times: the slot is still the stubborn thread's
    assert await state(following) == State.QUEUED and "handler following" not in timeline
    board.release("stubborn")
    await finished(following)

    await assert_following_ran_after("handler stubborn stopped", following, timeline)


async def test_a_finished_request_cannot_be_cancelled(start: Start) -> None:
    replica = await start(OneSlot)
    done = await submit(replica, "done")
    await finished(done)

    assert await replica.front.cancel(done.request_id) == (State.COMPLETED, False)
    assert (await output(done))["name"] == "done"


async def test_cancelling_the_next_request_in_line_stops_its_input_downloads(
    start: Start, board: Board, services: FakeServices, timeline: list[str]
) -> None:
    replica = await start(OneSlot)
    url = services.client.serve(f"{SOURCE}/a.png", b"pixels")
    services.client.hold(url)
    await hold_running(replica, board, "running")
    waiting = await submit(replica, "waiting", image_url=url)
    await board.reached(f"download {url}")

    await replica.front.cancel(waiting.request_id)

    await board.reached(f"download {url} cancelled")  # at the runner's next look at the queue
    assert "handler waiting" not in timeline


async def test_cancelling_the_next_request_in_line_deletes_the_inputs_it_already_downloaded(
    start: Start, board: Board, services: FakeServices, downloads: Path
) -> None:
    replica = await start(OneSlot)
    url = services.client.serve(f"{SOURCE}/a.png", b"pixels")
    await hold_running(replica, board, "running")
    waiting = await submit(replica, "waiting", image_url=url)
    await board.reached(f"downloaded {url}")
    assert [path.name for path in downloads.rglob("*.png")] == ["a.png"]

    await replica.front.cancel(waiting.request_id)

    await until(lambda: list(downloads.iterdir()) == [], "the prefetched input to be deleted")


async def test_stopping_the_runner_stops_its_handlers_and_a_restart_runs_their_requests_again(
    start: Start, board: Board, timeline: list[str]
) -> None:
    replica = await start(OneSlot, lease_seconds=SHORT_LEASE_SECONDS)
    running = await hold_running(replica, board, "running", "/async")
    waiting = await submit(replica, "waiting")

    await replica.runner.stop()

    assert "handler running cancelled" in timeline
    # Neither failed: the stopped one was handed back to the front of the queue, ahead of the one waiting.
    assert await states(running, waiting) == [State.QUEUED, State.QUEUED]
    assert [(await handle.front.queue.status(handle.request_id)).position for handle in (running, waiting)] == [0, 1]
    board.release_all()
    await start(OneSlot)  # the same queue file: the replica, restarted (no lease to wait out: it was released)
    await finished(running, waiting)

    assert (await output(running))["name"] == "running" and (await output(waiting))["name"] == "waiting"
    attempts = [(await handle.front.queue.status(handle.request_id)).attempt for handle in (running, waiting)]
    assert attempts == [1, 1], "the run cut short by the stop did not count"
    assert handlers_started(timeline) == ["running", "running", "waiting"]


async def test_a_request_run_again_stores_its_outputs_under_the_same_keys_as_its_first_run(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    """So a replica that dies after storing an output but before finishing leaves no second object behind."""
    replica = await start(OneSlot, lease_seconds=SHORT_LEASE_SECONDS)
    services.client.hold_encodes()
    painted = await submit(replica, "painted", "/paint")
    await until(lambda: len(services.client.encodes) == 1, "the first run's encode to start")

    await replica.runner.stop()  # mid-encode: the request goes back to the queue, and runs again from the start
    services.client.release_encodes()
    await start(OneSlot, lease_seconds=SHORT_LEASE_SECONDS)
    await finished(painted)

    assert handlers_started(timeline) == ["painted", "painted"]
    first_run, *second_run = [call.options["output_key"] for call in services.client.encodes]
    assert first_run.endswith(f"/{painted.request_id}/image")
    assert second_run == [first_run, first_run.replace("/image", "/preview")]


# -- time limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/async"], ids=["sync", "async"])
async def test_a_request_past_the_apps_time_limit_fails_deadline_exceeded_and_frees_its_slot(
    start: Start, board: Board, path: str
) -> None:
    replica = await start(TimeLimited)
    board.hold("endless")
    endless = await submit(replica, "endless", path)
    following = await submit(replica, "following")
    await finished(endless, following)

    assert await status(endless) == (grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_TIMEOUT")
    assert (await output(following))["name"] == "following"


async def test_the_time_limit_counts_the_input_downloads_too(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    replica = await start(TimeLimited)
    url = services.client.serve(f"{SOURCE}/slow.png", b"pixels")
    services.client.hold(url)

    late = await submit(replica, "late", image_url=url)
    await finished(late)

    assert await status(late) == (grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_TIMEOUT")
    assert f"download {url} cancelled" in timeline and "handler late" not in timeline


# -- media in ------------------------------------------------------------------------------------


async def test_the_next_requests_inputs_download_while_the_previous_handler_runs(
    start: Start, board: Board, services: FakeServices, timeline: list[str]
) -> None:
    replica = await start(OneSlot)
    url = services.client.serve(f"{SOURCE}/cat.png", b"cat pixels")
    first = await hold_running(replica, board, "first")
    second = await submit(replica, "second", image_url=url)

    await board.reached(f"downloaded {url}")
    assert await state(first) == State.IN_PROGRESS, "the download did not wait for the slot"
    assert await state(second) == State.QUEUED, "prefetched, not taken: another replica could still take it"
    board.release("first")
    await finished(second)

    assert timeline.index(f"downloaded {url}") < timeline.index("returned first")
    assert [entry for entry in timeline if entry.startswith("download ")] == [f"download {url}"], "downloaded once"
    assert (await output(second))["inputs"] == {"image_url": ["cat pixels"]}


async def test_each_url_downloads_once_the_handler_and_its_sdk_calls_find_the_files_and_they_go_afterwards(
    start: Start, services: FakeServices, timeline: list[str], downloads: Path
) -> None:
    replica = await start(OneSlot)
    a = services.client.serve(f"{SOURCE}/a.txt", b"a")
    b = services.client.serve(f"{SOURCE}/b.txt", b"b")

    handle = await submit(replica, "many", image_url=a, image_urls=[a, b, a])
    await finished(handle)

    result = await output(handle)
    assert result["inputs"] == {"image_url": ["a"], "image_urls": ["a", "b", "a"]}
    assert result["scope_urls"] == [a, b], "ferry.download_file in the handler answers from these"
    assert sorted(entry for entry in timeline if entry.startswith("download ")) == [f"download {a}", f"download {b}"]
    assert list(downloads.iterdir()) == [], "the inputs are deleted once the request is over"


async def test_a_refused_input_fails_the_request_with_the_downloaders_status_before_the_handler_runs(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    replica = await start(OneSlot)
    blocked = services.client.refuse(
        "http://10.0.0.1/secret.png", PermissionDenied("blocked address", reason="ADDRESS_BLOCKED")
    )
    slow = services.client.serve(f"{SOURCE}/slow.png", b"pixels")
    services.client.hold(slow)

    handle = await submit(replica, "blocked", image_url=blocked, image_urls=[slow])
    await finished(handle)

    assert await status(handle) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")
    assert f"download {slow} cancelled" in timeline, "the first failure stops the other downloads"
    assert "handler blocked" not in timeline


async def test_an_app_that_downloads_its_own_inputs_gets_its_urls_untouched(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    replica = await start(OwnDownloads)
    url = services.client.serve(f"{SOURCE}/a.png", b"pixels")

    handle = await submit(replica, "own", image_url=url)
    await finished(handle)

    assert (await output(handle))["inputs"] == {}
    assert not any(entry.startswith("download") for entry in timeline)


# -- media out -----------------------------------------------------------------------------------


async def test_tensors_in_media_fields_are_encoded_with_each_fields_options_and_the_requests_lifetime(
    start: Start, services: FakeServices
) -> None:
    replica = await start(OneSlot)

    handle = await submit(replica, "painted", "/paint", expires_in=600)
    await finished(handle)

    keys = [call.options.pop("output_key") for call in services.client.encodes]
    assert services.client.encodes == [
        EncodeCall((4, 6, 3), "png", {"expires_in": 600}),
        EncodeCall((4, 6, 3), "jpeg", {"quality": 80, "expires_in": 600}),
    ]
    # Each field's files are named by the request (a random salt fixed at submit, and its id) and the field,
    # so a run after a replica died replaces them.
    salt = keys[0].split("/")[0]
    assert keys == [f"{salt}/{handle.request_id}/image", f"{salt}/{handle.request_id}/preview"] and len(salt) >= 22
    result = await output(handle)
    image, preview = result["image"], result["preview"]
    assert (image["content_type"], image["width"], image["height"]) == ("image/png", 6, 4)
    assert preview["content_type"] == "image/jpeg" and preview["url"].endswith("/out.jpeg")


async def test_outputs_encode_after_the_handler_has_given_its_slot_to_the_next_request(
    start: Start, services: FakeServices, timeline: list[str]
) -> None:
    replica = await start(OneSlot)
    services.client.hold_encodes()
    painted = await submit(replica, "painted", "/paint")
    following = await submit(replica, "following")

    await finished(following)
    assert await state(painted) == State.IN_PROGRESS, "its outputs are still encoding"
    services.client.release_encodes()
    await finished(painted)

    assert timeline.index("returned painted") < timeline.index("encode png") < timeline.index("handler following")
    assert timeline.index("returned following") < timeline.index("encoded png")
    assert (await output(painted))["image"]["content_type"] == "image/png"


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (InvalidArgument("the tensor holds NaN", reason="NON_FINITE"), (grpc.StatusCode.INTERNAL, "NON_FINITE")),
        (Unavailable("no encoder answers", reason="ENCODER_DOWN"), (grpc.StatusCode.UNAVAILABLE, "ENCODER_DOWN")),
        (Cancelled("Cancelled on server"), (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_CANCELLED")),
    ],
    ids=[
        "a refused tensor is the apps bug",
        "an encoder that is down stays unavailable",
        "an encoder that cancels the call is not the callers cancel",
    ],
)
async def test_an_encode_that_fails_fails_the_request(
    start: Start, services: FakeServices, refusal: FerryError, expected: tuple[grpc.StatusCode, str]
) -> None:
    replica = await start(OneSlot)
    services.client.refuse_encodes(refusal)

    handle = await submit(replica, "painted", "/paint")
    await finished(handle)

    assert await status(handle) == expected
    assert refusal.message in (await failure(handle)).message


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
    replica = await start(OneSlot)

    failed = await submit(replica, "x", path)
    following = await submit(replica, "following")
    await finished(failed, following)

    assert await status(failed) == expected
    assert message in (await failure(failed)).message
    assert (await output(following))["name"] == "following"


async def test_unknown_endpoints_and_malformed_inputs_are_refused_when_submitted_and_never_queued(
    start: Start, board: Board
) -> None:
    replica = await start(OneSlot)
    await hold_running(replica, board, "running")  # the slot is busy: whatever is queued now stays queued

    with pytest.raises(FerryError) as unknown:
        await submit(replica, "x", "/nope")
    with pytest.raises(FerryError) as malformed:
        await replica.front.submit(NewRequest(replica.runner.app_id, "/", json.dumps({"name": 3})))

    assert (unknown.value.code, unknown.value.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_ENDPOINT")
    assert malformed.value.code == grpc.StatusCode.INVALID_ARGUMENT and "name" in malformed.value.message
    assert await replica.queue.depth(replica.runner.app_id) == 0


async def test_a_listener_hears_where_the_request_stands_its_progress_logs_and_partial_outputs_then_its_output(
    start: Start, board: Board
) -> None:
    replica = await start(OneSlot)
    await hold_running(replica, board, "running")
    handle = await submit(replica, "chatty", "/chatty")
    listener = Listener(handle)
    await until(lambda: listener.heard, "the listener to hear where it stands")
    board.release("running")
    await listener.to_the_end()

    assert listener.kinds()[0] == "queued"
    assert_heard_the_chatty_run(listener.heard[1:])
    assert {response.request_id for response in listener.heard} == {handle.request_id}


async def test_a_listener_that_comes_after_the_end_hears_what_the_request_reported_then_its_output(
    start: Start,
) -> None:
    replica = await start(OneSlot)
    handle = await submit(replica, "chatty", "/chatty")
    await finished(handle)

    listener = Listener(handle)
    await listener.to_the_end()

    assert_heard_the_chatty_run(listener.heard)


def assert_heard_the_chatty_run(heard: list[inference_pb2.StreamResponse]) -> None:
    """Everything /chatty reports, in order: started, its progress, its log line, its partial output, its end."""
    kinds = [response.WhichOneof("event") for response in heard]
    assert kinds == ["in_progress", "in_progress", "in_progress", "partial_output", "in_progress", "completed"]
    assert (heard[1].in_progress.progress.current, heard[1].in_progress.progress.total) == (1, 2)
    assert heard[1].in_progress.progress.message == "half"
    assert [(line.level, line.message) for line in heard[2].in_progress.logs] == [("INFO", "halfway")]
    assert json.loads(heard[3].partial_output.output_json) == {"step": 1}
    assert json.loads(heard[5].completed.output_json)["name"] == "chatty"


async def test_setup_and_handlers_reach_the_stack_hosting_the_app_and_handlers_the_requests_lifetime(
    start: Start, services: FakeServices
) -> None:
    replica = await start(OneSlot)

    handle = await submit(replica, "scoped", expires_in=600)
    await finished(handle)

    assert replica.runner.app.stack_at_setup is services.target
    assert (await output(handle))["scope_expires_in"] == 600
