"""Connect's error model (connectrpc.com/docs/protocol, "Error Codes" and "Error and EndStreamResponse").

An error is JSON: `{"code": "invalid_argument", "message": ..., "details": [{"type": ..., "value": ...}]}`,
the code being the gRPC code's name in lower case. A unary call answers it with the code's HTTP status;
a stream ends with it inside its EndStreamResponse, under a 200. The gRPC server's `ErrorInfo` (and any
other detail it sends in `grpc-status-details-bin`) travels as a detail: its type name and its bytes in
unpadded base64.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from ferry.services.errors import MAX_MESSAGE_CHARS

# The spec's table: each code and the HTTP status a unary error carries.
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def code_name(code: grpc.StatusCode) -> str:
    """Connect spells CANCELLED with one L; every other name is gRPC's in lower case."""
    return "canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()


class ConnectError(Exception):
    """An error answered in Connect's shape. `http_status` overrides the code's own status where the HTTP
    layer has a more exact one (404 for a procedure that does not exist, 405, 415)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: tuple[Any, ...] = (),
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"
        self.details = details  # google.protobuf.Any messages
        self.http_status = http_status or HTTP_STATUS.get(code, 500)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> ConnectError:
        """The gRPC server's status, its ErrorInfo included."""
        details: tuple[Any, ...] = ()
        for key, value in error.trailing_metadata() or ():
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                details = tuple(status_pb2.Status.FromString(value).details)
        return cls(error.code(), error.details() or "", details)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": code_name(self.code)}
        if self.message:
            body["message"] = self.message
        if self.details:
            body["details"] = [_detail(detail) for detail in self.details]
        return body

    def to_response(self, headers: dict[str, str] | None = None) -> web.Response:
        """A unary error: the code's HTTP status and the error as the JSON body."""
        return web.Response(
            status=self.http_status,
            body=json.dumps(self.to_json()).encode(),
            content_type="application/json",
            headers=headers,
        )


def _detail(detail: Any) -> dict[str, Any]:
    type_name = detail.type_url.rsplit("/", 1)[-1]
    shown: dict[str, Any] = {"type": type_name, "value": base64.b64encode(detail.value).decode().rstrip("=")}
    info = error_details_pb2.ErrorInfo()
    if detail.Unpack(info):
        # The spec's optional readable copy: clients must not depend on it, people reading curl output can.
        shown["debug"] = json_format.MessageToDict(info)
    return shown
