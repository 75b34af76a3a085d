"""How a server answers a `ferry.errors.FerryError`: a gRPC status with its message and a
`google.rpc.ErrorInfo` reason. The status interceptor (`services/interceptors.py`) is the one caller.

The error classes themselves live in the SDK (`ferry.errors`), which apps, the
runner, the services and clients all share.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ferry.errors import ERROR_DOMAIN, FerryError
from ferry.services.rpc_context import RpcContext

# A status travels in HTTP/2 trailers, which clients cap (8 KiB by default): a message echoing a
# 1 MiB URL would arrive as the transport's RESOURCE_EXHAUSTED instead of ferry's own code.
MAX_MESSAGE_CHARS = 1000


def to_status(code: grpc.StatusCode, reason: str, message: str) -> grpc.Status:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


async def abort(context: RpcContext, code: grpc.StatusCode, reason: str, message: str) -> NoReturn:
    status = to_status(code, reason, message)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("context.abort returned")  # it always raises


async def abort_with(context: RpcContext, error: FerryError) -> NoReturn:
    await abort(context, error.code, error.reason, error.message)
