"""One family of errors for the whole stack: a gRPC status code, a stable reason, a human message.

Apps, the runner, the services and the SDK raise and catch the same classes:

    raise ferry.errors.InvalidArgument("width must be a multiple of 8", reason="BAD_WIDTH")

    try:
        client.run("painter", {...})
    except ferry.errors.NotFound: ...        # the SDK raises the class the status names
    except ferry.FerryError as error: ...    # any of them: error.code, error.reason, error.message

Each side maps them at one boundary: a server's status interceptor turns a
raised error into its status and `google.rpc.ErrorInfo` (reason, domain
`ferry.dev`); the SDK turns a failed call back into the class its code names
(`map_rpc_errors`, `FerryError.from_rpc_error`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.v1 import inference_pb2

__all__ = [
    "ERROR_DOMAIN",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FerryError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "map_rpc_errors",
]

# The ErrorInfo domain of every reason ferry sets.
ERROR_DOMAIN = "ferry.dev"


class FerryError(Exception):
    """A call to the stack failed, or is to fail: `code` is its gRPC status, `reason` the stable ErrorInfo reason.

    Raise a subclass (`InvalidArgument(...)`); `FerryError.of(code, ...)` builds the one a code names.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    _by_code: ClassVar[dict[grpc.StatusCode, type[FerryError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The first class that declares a code is the one a status with that code becomes.
        if "code" in vars(cls):
            FerryError._by_code.setdefault(cls.code, cls)

    def __init__(self, message: str, *, reason: str | None = None, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def of(cls, code: grpc.StatusCode, message: str, reason: str = "") -> FerryError:
        """The error of the class `code` names (`NotFound` for NOT_FOUND), else a FerryError carrying `code`."""
        kind = FerryError._by_code.get(code)
        return (
            kind(message, reason=reason or None)
            if kind is not None
            else FerryError(message, reason=reason or code.name, code=code)
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> FerryError:
        """Works for sync calls and grpc.aio's AioRpcError alike (both carry code, details, trailers)."""
        call: Any = error
        if not hasattr(call, "code"):
            return Unknown(str(error))
        reason = ""
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # details disagree with the status line: ignore them
            status = None
        for detail in status.details if status else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
        return cls.of(call.code(), call.details() or "", reason)

    @classmethod
    def from_request_error(cls, error: inference_pb2.RequestError) -> FerryError:
        """A failed app request as GetStatus, Stream and Realtime report it."""
        code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
        return cls.of(code, error.message, error.reason)


class InvalidArgument(FerryError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class PermissionDenied(FerryError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Unauthenticated(FerryError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ResourceExhausted(FerryError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class NotFound(FerryError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(FerryError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unavailable(FerryError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Cancelled(FerryError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class DeadlineExceeded(FerryError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Unimplemented(FerryError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class Internal(FerryError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


class Unknown(FerryError):
    code = grpc.StatusCode.UNKNOWN
    reason = "UNKNOWN"


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """The SDK's one conversion point: a `grpc.RpcError` raised inside becomes the `FerryError` its status names.

    A plain `with` serves sync and async code alike: it sees whatever the awaits inside raise.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise FerryError.from_rpc_error(error) from None
