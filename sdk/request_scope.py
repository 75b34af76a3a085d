"""What an inference runner tells the SDK calls a handler makes: the request's lifecycle and its inputs.

A handler written against the plain SDK (`ferry.download_file(input.image_url)`,
`Image.from_tensor(...)`) should behave as the request asks without passing
anything through: its outputs expire as the caller's lifecycle preference says,
a URL the runner already downloaded is not fetched a second time, and once the
request is cancelled its next download, upload or encode raises CANCELLED, so
even a handler that never polls its context stops at the next media call. The
runner opens a `request_scope` around each handler call; the SDK reads it in
`lifecycle()` and `download_file`. Outside a handler the scope is empty and
changes nothing. The server's log reads the request's id and app from it, so
every line emitted while a request runs names the request; the SDK's calls made
inside it carry the two as metadata (`scope_metadata`), so the downloader's and
the encoder's lines for those calls name it too.

It is a context variable, so it follows the handler into `asyncio` tasks and
into worker threads started with a copied context (the runner runs sync
handlers that way).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ferry.errors import Cancelled

if TYPE_CHECKING:  # connection.py reads this module: at run time the name is only an annotation here
    from ferry.connection import StackTarget

__all__ = ["APP_KEY", "REQUEST_ID_KEY", "RequestScope", "current_scope", "in_use", "request_scope", "scope_metadata"]

# The metadata a call made inside a request carries: which request, of which app.
REQUEST_ID_KEY = "x-ferry-request-id"
APP_KEY = "x-ferry-app"


@dataclass(frozen=True)
class RequestScope:
    # Seconds the media a request produces lives; None = the store's default.
    expires_in: int | None = None
    # URL → local path of the inputs the runner downloaded before calling the handler.
    downloaded: Mapping[str, Path] = field(default_factory=dict)
    # Set once the request is cancelled.
    cancelled: threading.Event | None = None
    # The stack hosting the app: where `ferry.download_file` and the other module-level helpers go
    # from its setup() and handlers (None: FERRY_ADDRESS and friends).
    stack: StackTarget | None = None
    # Which request this is, for the log lines emitted while it runs (`ferry.services.logs` stamps them).
    request_id: str | None = None
    app: str | None = None

    def raise_if_cancelled(self) -> None:
        """Refuse to start a download, upload or encode for a request that was cancelled."""
        if self.cancelled is not None and self.cancelled.is_set():
            raise Cancelled("the request this call was made for was cancelled", reason="REQUEST_CANCELLED")

    def downloaded_path(self, url: str) -> Path | None:
        """The runner's copy of `url`, while it is still there."""
        path = self.downloaded.get(url)
        return path if path is not None and path.is_file() else None


_scope: contextvars.ContextVar[RequestScope] = contextvars.ContextVar(
    "ferry_request_scope",
    default=RequestScope(),  # noqa: B039 (frozen, its Mapping never written: outside a request, nothing downloaded)
)


_in_use = False


def current_scope() -> RequestScope:
    return _scope.get()


def in_use() -> bool:
    """Whether this process has run anything in a request scope (it hosts a runner): a channel opened now
    passes the current request's id on. A runner opens one around its apps' setup(), before any channel."""
    return _in_use


def scope_metadata() -> tuple[tuple[str, str], ...]:
    """The current request's id and app as gRPC metadata; () outside a request."""
    scope = _scope.get()
    if scope.request_id is None:
        return ()
    return ((REQUEST_ID_KEY, scope.request_id),) + (((APP_KEY, scope.app),) if scope.app else ())


@contextmanager
def request_scope(scope: RequestScope) -> Iterator[RequestScope]:
    """For runners: SDK calls inside the block follow `scope`."""
    global _in_use
    _in_use = True
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)
