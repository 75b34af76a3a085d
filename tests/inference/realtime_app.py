"""An app for the Realtime tests: realtime endpoints that invert, echo with a counter, sum, and fail on cue.

Each handler's `finally` appends "<request id> <endpoint> cancelled=<bool>" to
the file named by FERRY_TEST_REALTIME_LOG, so a test in another process can
see that a vanished caller's handler was closed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from pydantic import BaseModel

from ferry.inference import App, RequestContext, endpoint


class Numbers(BaseModel):
    values: list[float]


class Inverted(BaseModel):
    values: list[float]
    index: int


class Text(BaseModel):
    text: str
    delay_seconds: float = 0.0


class Echoed(BaseModel):
    text: str
    count: int


class Total(BaseModel):
    total: float
    inputs: int


def _record_close(context: RequestContext, path: str) -> None:
    log = os.environ.get("FERRY_TEST_REALTIME_LOG")
    if log:
        with open(log, "a") as file:
            file.write(f"{context.request_id} {path} cancelled={context.cancelled}\n")


class RealtimeApp(App):
    app_id = "live"
    max_concurrency = 1  # realtime calls must not need the single queue slot

    @endpoint("/invert", realtime=True)
    async def invert(self, inputs: AsyncIterator[Numbers]) -> AsyncIterator[Inverted]:
        index = 0
        async for numbers in inputs:
            yield Inverted(values=[-v for v in numbers.values], index=index)
            index += 1

    @endpoint("/echo", realtime=True)
    async def echo(self, inputs: AsyncIterator[Text], context: RequestContext) -> AsyncIterator[Echoed]:
        count = 0
        try:
            async for item in inputs:
                count += 1
                await asyncio.sleep(item.delay_seconds)
                yield {"text": item.text, "count": count}  # a dict is validated against Echoed
        finally:
            _record_close(context, "/echo")

    @endpoint("/sum", realtime=True)
    async def total(self, inputs: AsyncIterator[Numbers]) -> AsyncIterator[Total]:
        total, seen = 0.0, 0
        async for numbers in inputs:
            total, seen = total + sum(numbers.values), seen + 1
        yield Total(total=total, inputs=seen)  # only once the caller is done writing

    @endpoint("/fail", realtime=True)
    async def fail(self, inputs: AsyncIterator[Text], context: RequestContext) -> AsyncIterator[Echoed]:
        try:
            async for item in inputs:
                if item.text == "boom":
                    raise RuntimeError(f"model exploded on {item.text!r}")
                yield Echoed(text=item.text, count=0)
        finally:
            _record_close(context, "/fail")

    @endpoint("/bad-output", realtime=True)
    async def bad_output(self, inputs: AsyncIterator[Text]) -> AsyncIterator[Echoed]:
        async for item in inputs:
            yield {"text": item.text}  # no count: the handler's bug, not the caller's

    @endpoint("/plain")
    def plain(self, input: Text) -> Echoed:
        return Echoed(text=input.text, count=1)
