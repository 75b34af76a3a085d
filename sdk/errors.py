"""Errors the SDK raises: a gRPC status code, its ErrorInfo reason, and the server's message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.v1 import inference_pb2


class FerryError(Exception):
    """A call to the stack failed. `code` is the gRPC status, `reason` the stable ErrorInfo reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> FerryError:
        """Works for sync calls and grpc.aio's AioRpcError alike (both carry code, details, trailers)."""
        call: Any = error
        if not hasattr(call, "code"):
            return cls(grpc.StatusCode.UNKNOWN, str(error))
        reason = ""
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # details disagree with the status line: ignore them
            status = None
        for detail in status.details if status else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
        return cls(call.code(), call.details() or "", reason)

    @classmethod
    def from_request_error(cls, error: inference_pb2.RequestError) -> FerryError:
        """A failed app request as GetStatus, Stream and Realtime report it."""
        code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
        return cls(code, error.message, error.reason)


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """The SDK's one conversion point: a `grpc.RpcError` raised inside becomes a `FerryError`.

    A plain `with` serves sync and async code alike: it sees whatever the awaits inside raise.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise FerryError.from_rpc_error(error) from None
