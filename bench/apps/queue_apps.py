"""The apps bench/request_queue.py serves: each output says when (and in which process) its handler began."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from ferry.inference import App, RequestContext, endpoint


class Nothing(BaseModel):
    pass


class Began(BaseModel):
    started: float  # time.time() as the handler began
    pid: int


class NoOp(App):
    """Does nothing, on the event loop: what is timed is the queue's hand-over, not a handler.

    32 slots, so each of 32 concurrent clients' requests can start at once rather than wait for another's.
    """

    app_id = "noop"
    machine_type = "CPU"
    max_concurrency = 32

    @endpoint("/")
    async def run(self, input: Nothing) -> Began:
        return Began(started=time.time(), pid=os.getpid())


class Sleep(BaseModel):
    seconds: float = 0.05
    starts: str = ""  # a file each start is appended to ("pid time"), as it happens, when given


class Slept(Began):
    ended: float


class Sleeper(App):
    """Sleeps in a worker thread, one request at a time: GPU time, as far as the queue can tell."""

    app_id = "sleeper"
    machine_type = "GPU"
    max_concurrency = 1

    @endpoint("/")
    def run(self, input: Sleep, context: RequestContext) -> Slept:
        started = time.time()
        if input.starts:
            with open(input.starts, "a") as starts:
                starts.write(f"{os.getpid()} {started}\n")
        end = time.monotonic() + input.seconds
        while (left := end - time.monotonic()) > 0:
            context.raise_if_cancelled()  # a long sleep (the reclaim case) ends when its request is cancelled
            time.sleep(min(left, 0.05))
        return Slept(started=started, pid=os.getpid(), ended=time.time())
