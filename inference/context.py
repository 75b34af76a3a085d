"""What a handler gets for one request: its id, progress, log lines, partial outputs and cancellation.

A `RequestContext` turns each call into a callback the runner supplies, so the
runner decides how events travel (queues, streams, records); this module knows
nothing about gRPC. Sync handlers run in worker threads while the runner reads
from its event loop, so the context is thread-safe: callbacks are entered one
at a time, whichever thread calls.

`App.progress` / `App.log` reach the *current* request through a context
variable the runner sets around each handler call with `using_context`.
Context variables do not cross into threads on their own: the runner must run
a sync handler with `contextvars.copy_context().run` (or `asyncio.to_thread`,
which copies; `loop.run_in_executor` does not), and a handler that starts its
own threads must do the same for them.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["LOG_LEVELS", "RequestCancelled", "RequestContext", "current_context", "logging_context", "using_context"]

# The level names `LogLine.level` carries; `logging`'s own names, so runners can map them back.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class RequestCancelled(Exception):
    """Raised by `RequestContext.raise_if_cancelled` once the request has been cancelled."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} was cancelled")
        self.request_id = request_id


class RequestContext:
    """One request as its handler sees it.

    The runner builds it with three callbacks: `on_progress(current, total,
    message)`, `on_log(message, level)` and `on_partial(output_dict)`. They are
    called with a lock held, so they never run concurrently and must return
    quickly (from a worker thread, `loop.call_soon_threadsafe` is the usual
    body). `cancelled` may be an event the runner already owns; `cancel()` sets
    it. After `close()` (the request is over) further events are dropped, so a
    thread the handler left running cannot report into a finished request.
    """

    def __init__(
        self,
        request_id: str,
        on_progress: Callable[[float, float, str], None],
        on_log: Callable[[str, str], None],
        on_partial: Callable[[dict[str, Any]], None],
        cancelled: threading.Event | None = None,
    ) -> None:
        self._request_id = request_id
        self._on_progress = on_progress
        self._on_log = on_log
        self._on_partial = on_partial
        self._cancel_flag = cancelled if cancelled is not None else threading.Event()
        # Reentrant: a callback that itself logs through the context must not deadlock.
        self._lock = threading.RLock()
        self._closed = False
        # Set by the runner before the handler runs: the input's media fields, downloaded (field → path or
        # paths). Empty when the app sets `download_inputs = False`.
        self.input_files: dict[str, Path | list[Path]] = {}

    def __repr__(self) -> str:
        return f"RequestContext({self._request_id!r}, cancelled={self.cancelled})"

    @property
    def request_id(self) -> str:
        return self._request_id

    # -- events ----------------------------------------------------------------------

    def progress(self, current: float, total: float = 0, message: str = "") -> None:
        """Report `current` units done of `total` (0 = unknown) with a short label."""
        for name, value in (("current", current), ("total", total)):
            if math.isnan(value) or value < 0:
                raise ValueError(f"progress {name} must be a number >= 0, got {value!r}")
        with self._lock:
            if not self._closed:
                self._on_progress(float(current), float(total), message)

    def log(self, message: str, level: str = "INFO") -> None:
        """Add a line to the request's log; `level` is one of `LOG_LEVELS`, in any case."""
        name = level.upper()
        if name not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        with self._lock:
            if not self._closed:
                self._on_log(str(message), name)

    def partial(self, output: BaseModel | dict[str, Any]) -> None:
        """Emit a partial output: a model is dumped as JSON-ready data, a dict passes as-is."""
        if isinstance(output, BaseModel):
            document = output.model_dump(mode="json")
        elif isinstance(output, dict):
            document = dict(output)
        else:
            raise TypeError(f"a partial output is a pydantic model or a dict, got {type(output).__name__}")
        with self._lock:
            if not self._closed:
                self._on_partial(document)

    # -- cancellation ------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the request is cancelled; long sync handlers poll it between steps."""
        return self._cancel_flag.is_set()

    def raise_if_cancelled(self) -> None:
        """Stop the handler here (`RequestCancelled`) if the request has been cancelled."""
        if self._cancel_flag.is_set():
            raise RequestCancelled(self._request_id)

    def cancel(self) -> None:
        """For the runner: mark the request cancelled. The handler sees it at its next poll."""
        self._cancel_flag.set()

    def close(self) -> None:
        """For the runner: the request is over; drop whatever the handler still reports."""
        with self._lock:
            self._closed = True


def logging_context(
    request_id: str, where: str, logger: logging.Logger, cancelled: threading.Event | None = None
) -> RequestContext:
    """A context for calls no caller follows as events (realtime sessions, health probes): it reports to `logger`.

    `where` names the call in every line ("upscaler/live session 3f2a…").
    """

    def on_progress(current: float, total: float, message: str) -> None:
        logger.info("%s progress %g/%g %s", where, current, total, message)

    def on_log(message: str, level: str) -> None:
        logger.log(logging.getLevelName(level), "%s: %s", where, message)

    def on_partial(output: dict[str, Any]) -> None:
        logger.debug("%s partial output: %s", where, output)

    return RequestContext(
        request_id, on_progress=on_progress, on_log=on_log, on_partial=on_partial, cancelled=cancelled
    )


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("ferry_request_context", default=None)


def current_context() -> RequestContext | None:
    """The context of the request this code runs for, or None outside a handler call."""
    return _current.get()


@contextmanager
def using_context(context: RequestContext) -> Iterator[RequestContext]:
    """For the runner: make `context` current for the handler call inside the block.

    For a sync handler, enter this *inside* the worker thread (or enter it
    before `contextvars.copy_context()` and run the handler in that copy).
    """
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
