"""The runner's log lines name the request they are about: the handler's own, the runner's, from any thread.

The runner in-process on a SQLite queue and the fake services (as in
test_runner.py); records are read as `logging` hands them to caplog's handler,
which carries the filter `ferry serve` installs (`RequestFields`). How the lines
are written (JSON, text): tests/services/test_logs.py; in a whole stack:
tests/e2e/test_logs_stack.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel

from ferry.inference import App, RequestContext, endpoint
from ferry.inference.queue.base import NewRequest
from ferry.inference.queue.sqlite import SqliteQueue
from ferry.inference.requests import Requests
from ferry.inference.runner import AppRunner
from ferry.services.logs import RequestFields
from tests.inference.fake_services import FakeServices

WAIT_SECONDS = 10.0
handler_log = logging.getLogger("tests.chatty_model")


class Job(BaseModel):
    name: str


class ChattyApp(App):
    app_id = "chatty"

    @endpoint("/")
    def sync_work(self, job: Job, context: RequestContext) -> Job:
        context.log(f"context line of {job.name}")
        handler_log.info("plain line of %s", job.name)
        # A thread of the handler's own, started without copying its context: only the context object goes along.
        thread = threading.Thread(target=context.log, args=(f"thread line of {job.name}",))
        thread.start()
        thread.join()
        return job

    @endpoint("/async")
    async def async_work(self, job: Job, context: RequestContext) -> Job:
        context.log(f"context line of {job.name}")
        handler_log.info("plain line of %s", job.name)
        return job

    @endpoint("/crash")
    def crash(self, job: Job) -> Job:
        raise RuntimeError(f"model exploded on {job.name}")


Run = Callable[[str, str], Awaitable[str]]


@pytest.fixture
async def run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Run]:
    """Run one request of ChattyApp to its end; its id. Lines are captured at INFO and up, with request fields."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestFields())
    queue = await SqliteQueue.open(tmp_path / "queue.sqlite3")
    threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="handler")
    runner = AppRunner(ChattyApp, queue=queue, workers=threads, services=FakeServices(tmp_path / "dl", []))
    await runner.start()
    front = Requests(queue, {runner.app_id: runner})

    async def run_one(path: str, name: str) -> str:
        request_id = await front.submit(NewRequest("chatty", path, json.dumps({"name": name}), None))
        await asyncio.wait_for(front.outcome(request_id), WAIT_SECONDS)
        return request_id

    yield run_one
    await runner.stop()
    threads.shutdown(wait=True)
    await queue.close()
    caplog.handler.removeFilter(caplog.handler.filters[-1])


def naming(caplog: pytest.LogCaptureFixture, text: str) -> list[tuple[str | None, str | None]]:
    """(request_id, app) of each captured line whose message holds `text`."""
    return [
        (getattr(record, "request_id", None), getattr(record, "app", None))
        for record in caplog.records
        if text in record.getMessage()
    ]


@pytest.mark.parametrize("path", ["/", "/async"])
async def test_a_handler_s_context_log_and_plain_logging_lines_name_its_request_and_app(run, caplog, path):
    first, second = await run(path, "one"), await run(path, "two")
    for request_id, name in ((first, "one"), (second, "two")):
        assert naming(caplog, f"context line of {name}") == [(request_id, "chatty")]
        assert naming(caplog, f"plain line of {name}") == [(request_id, "chatty")]


async def test_a_context_log_line_from_a_thread_the_handler_started_names_its_request(run, caplog):
    request_id = await run("/", "threaded")
    assert naming(caplog, "thread line of threaded") == [(request_id, "chatty")]


async def test_the_runner_s_own_line_about_a_failed_handler_names_the_request(run, caplog):
    request_id = await run("/crash", "boom")
    [failed] = [record for record in caplog.records if record.getMessage().startswith("handler chatty/crash failed")]
    assert (failed.request_id, failed.app) == (request_id, "chatty")  # type: ignore[attr-defined]


async def test_lines_outside_any_request_name_none(run, caplog):
    await run("/", "one")
    logging.getLogger("tests.elsewhere").info("between requests")
    assert naming(caplog, "between requests") == [(None, None)]
