"""Realtime calls: one open call to a realtime endpoint, inputs sent and outputs received as they come.

    with client.realtime("filters", "/live") as live:        # or ferry.realtime(...)
        for frame in frames:
            live.send({"frame_url": frame})
            print(live.recv())
        live.close()                                          # done sending
        for output in live: ...                               # the rest, until the handler returns

    async with async_client.realtime("filters", "/live") as live:
        await live.send({"frame_url": frame})
        print(await live.recv())

Sending and receiving are independent: send many inputs then read their
outputs, or read in another thread (sync) or task (async) — one reader at a
time. Opening waits for the server to accept the app and path (one round
trip), so an unknown app or path raises `FerryError` (NOT_FOUND) there rather
than at the first `recv`.

What `recv` raises:

- `FerryError` (INVALID_ARGUMENT) for an input the server rejected. Only that
  input is lost: the connection stays usable, the next `recv` gives the next
  answer. Iteration raises it too; iterate again to go on.
- `FerryError` with the call's status once the call ended in error (the
  handler failed: INTERNAL; after `cancel()`: CANCELLED), then on every later `recv`.
- `EOFError` once the server ended the call cleanly (the handler returned),
  then on every later `recv`. Iteration simply stops there.
- `TimeoutError` when `timeout` seconds passed with nothing to receive; the
  connection stays usable.

A rejection is answered as soon as the server reads its input, so it may
arrive before the outputs of earlier inputs the handler is still working on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeAlias

import grpc
from pydantic import BaseModel

from ferry.errors import Cancelled, FerryError, Unknown
from ferry.v1 import inference_pb2

__all__ = ["AsyncRealtimeConnection", "RealtimeConnection", "RealtimeInput"]

# One input: a JSON-ready mapping, or the endpoint's input model.
RealtimeInput: TypeAlias = Mapping[str, Any] | BaseModel

# The initial-metadata key the server answers `open` with: the session's request id.
SESSION_KEY = "ferry-request-id"
# Done sending. The connections open with `sends_end`, so a stream that stops without this is a cancel.
_END = inference_pb2.RealtimeRequest(end=inference_pb2.RealtimeEnd())
# A received response, or how the call ended (EOFError, FerryError).
_Received: TypeAlias = inference_pb2.RealtimeResponse | BaseException


def _input_request(input: RealtimeInput) -> inference_pb2.RealtimeRequest:
    document = input.model_dump_json() if isinstance(input, BaseModel) else json.dumps(dict(input))
    return inference_pb2.RealtimeRequest(input_json=document)


def _output(response: inference_pb2.RealtimeResponse) -> dict[str, Any]:
    if response.WhichOneof("message") == "error":
        raise FerryError.from_request_error(response.error)
    output: dict[str, Any] = json.loads(response.output_json)
    return output


def _session_id(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    return next((str(value) for key, value in metadata or () if key == SESSION_KEY), None)


def _ended_cleanly() -> EOFError:
    return EOFError("the realtime call has ended: the handler returned")


def _cancelled() -> FerryError:
    return Cancelled("the realtime call was cancelled by the caller")


class RealtimeConnection:
    """An open Realtime call: `send` inputs, `recv` or iterate outputs, `close` when done sending.

    Made by `Client.realtime`. A thread started here receives, so `recv` can
    time out without disturbing the call; leaving a `with` block (or
    `cancel()`) ends a call still open, and the server closes its handler.
    """

    def __init__(self, stub: Any, opening: inference_pb2.RealtimeOpen) -> None:
        # What the call sends, in order; None stops writing (after `end`, or after a cancel).
        self._outgoing: queue.SimpleQueue[inference_pb2.RealtimeRequest | None] = queue.SimpleQueue()
        self._outgoing.put(inference_pb2.RealtimeRequest(open=opening))
        # What it received; the end, once there, is put back so every later `recv` sees it.
        self._incoming: queue.SimpleQueue[_Received] = queue.SimpleQueue()
        self._writing = True
        self._end: BaseException | None = None
        self._call: Any = stub.Realtime(self._requests())
        session = _session_id(self._call.initial_metadata())
        if session is None:  # refused before it opened (unknown app or path): the status says why
            self._stop_writing()
            raise FerryError.from_rpc_error(self._call)
        self.request_id: str = session
        threading.Thread(target=self._receive, name=f"ferry-realtime-{session[:8]}", daemon=True).start()

    def send(self, input: RealtimeInput) -> None:
        """Queue one input; it is sent in order behind the ones before it. Raises how the call ended, if it has."""
        if not self._writing:
            raise RuntimeError("this realtime connection was closed for sending")
        if self._end is not None:
            raise self._end.with_traceback(None)
        self._outgoing.put(_input_request(input))

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next output; raises for a rejected input, the call's end, or `timeout` (see the module's doc)."""
        try:
            item = self._incoming.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout} s") from None
        if isinstance(item, BaseException):
            self._incoming.put(item)
            raise item.with_traceback(None)
        return _output(item)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Outputs until the server ends the call; a rejected input raises `FerryError` (iterate again to go on)."""
        while True:
            try:
                output = self.recv()
            except EOFError:
                return
            yield output

    def close(self) -> None:
        """Done sending: the handler's input iterator ends; its remaining outputs still arrive."""
        if self._writing:
            self._outgoing.put(_END)
        self._stop_writing()

    def cancel(self) -> None:
        """Abandon the call: the server closes the handler; `recv` raises CANCELLED once queued outputs are read."""
        if self._call.cancel():
            self._end = _cancelled()
        self._stop_writing()  # after cancelling; without `end` first, the server reads it as a cancel anyway

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._outgoing.put(None)  # also frees grpc's thread waiting on the next request

    def _requests(self) -> Iterator[inference_pb2.RealtimeRequest]:
        while (request := self._outgoing.get()) is not None:
            yield request

    def _receive(self) -> None:
        end: BaseException
        try:
            for response in self._call:
                self._incoming.put(response)
            end = _ended_cleanly()
        except grpc.RpcError as error:
            end = FerryError.from_rpc_error(error)
        self._end = self._end or end
        self._incoming.put(end)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class AsyncRealtimeConnection:
    """The asyncio twin of `RealtimeConnection`: `await send`, `await recv`, `async for`, `await close()`, `cancel()`.

    `AsyncClient.realtime` returns it unopened: `async with` it, or `await` it,
    to open the call. Cancelling a task while it waits in `send` cancels the
    whole call (grpc.aio's rule); one waiting in `recv` does not.
    """

    def __init__(self, stub: Any, opening: inference_pb2.RealtimeOpen) -> None:
        self._stub = stub
        self._opening = opening
        self._call: Any = None
        self._writing = True
        self._end: BaseException | None = None
        # A read outliving a timed-out `recv`: grpc.aio cancels the call if a read is cancelled.
        self._pending: asyncio.Task[_Received] | None = None
        self.request_id = ""

    def __await__(self) -> Generator[Any, None, Self]:
        return self._opened_self().__await__()

    async def _opened_self(self) -> Self:
        await self._open()
        return self

    async def _open(self) -> None:
        if self._call is not None:
            return
        call = self._stub.Realtime()
        try:
            await call.write(inference_pb2.RealtimeRequest(open=self._opening))
            session = _session_id(await call.initial_metadata())
            if session is None:  # refused before it opened: reading raises its status
                await call.read()
                raise Unknown("the realtime call ended before it opened")
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None
        self._call, self.request_id = call, session

    def _opened(self) -> Any:
        if self._call is None:
            raise RuntimeError(
                "open the connection first: `async with client.realtime(...)` or `await client.realtime(...)`"
            )
        return self._call

    async def send(self, input: RealtimeInput) -> None:
        """Send one input. Raises how the call ended, if it has."""
        call = self._opened()
        if not self._writing:
            raise RuntimeError("this realtime connection was closed for sending")
        if self._end is not None:
            raise self._end.with_traceback(None)
        try:
            await call.write(_input_request(input))
        except grpc.RpcError as error:
            raise FerryError.from_rpc_error(error) from None

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next output; raises for a rejected input, the call's end, or `timeout` (see the module's doc)."""
        call = self._opened()
        if self._end is not None:
            raise self._end.with_traceback(None)
        if self._pending is None:
            self._pending = asyncio.create_task(self._read(call))
        reading = self._pending
        done, _ = await asyncio.wait({reading}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no output within {timeout} s")
        self._pending = None
        item = _cancelled() if reading.cancelled() else reading.result()
        if isinstance(item, BaseException):
            self._end = self._end or item
            raise self._end.with_traceback(None)
        return _output(item)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Outputs until the server ends the call; a rejected input raises `FerryError` (iterate again to go on)."""
        while True:
            try:
                output = await self.recv()
            except EOFError:
                return
            yield output

    async def close(self) -> None:
        """Done sending: the handler's input iterator ends; its remaining outputs still arrive."""
        call = self._opened()
        if self._writing:
            self._writing = False
            # A call that ended meanwhile needs no `end`: `recv` says how it ended.
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await call.write(_END)
                await call.done_writing()

    def cancel(self) -> None:
        """Abandon the call: the server closes the handler; `recv` raises CANCELLED from then on."""
        if self._call is not None and self._call.cancel():
            self._end = self._end or _cancelled()
        if self._pending is not None:
            self._pending.cancel()

    @staticmethod
    async def _read(call: Any) -> _Received:
        try:
            response = await call.read()
        except grpc.RpcError as error:
            return FerryError.from_rpc_error(error)
        return _ended_cleanly() if response is grpc.aio.EOF else response

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()
