"""Every unary and server-streaming RPC of the three services over the Connect protocol, at
`POST /ferry.v1.<Service>/<Method>` (connectrpc.com/docs/protocol).

One generic handler, driven by the service descriptors: it decodes the body (JSON or binary protobuf;
enveloped for streams), calls the stack's own gRPC server with the caller's credentials and
Connect-Timeout-Ms as the deadline, and answers in the same codec. Client- and bidi-streaming RPCs
(Encode, Upload, UploadPart, Realtime) stay gRPC-only: a client streaming over HTTP/1.1 gains nothing
the plain upload routes (`uploads.py`) do not give, so they answer `unimplemented`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from ferry.services.gateway.channel import (
    StackChannel,
    caller_metadata,
    cancelled_when_client_leaves,
    reply_unless_client_leaves,
)
from ferry.services.gateway.codec import CODECS, Codec
from ferry.services.gateway.connect_errors import ConnectError
from ferry.services.gateway.envelope import END_STREAM, envelope, read_body, read_single_message
from ferry.v1 import downloader_pb2, encoder_pb2, inference_pb2

SERVICES: tuple[ServiceDescriptor, ...] = (
    downloader_pb2.DESCRIPTOR.services_by_name["DownloaderService"],
    encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"],
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"],
)
_TIMEOUT_MS = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class Procedure:
    path: str  # "/ferry.v1.DownloaderService/Download"
    request_type: type[Message]
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool


def procedures(services: tuple[ServiceDescriptor, ...] = SERVICES) -> Iterator[Procedure]:
    for service in services:
        for method in service.methods:
            yield Procedure(
                f"/{service.full_name}/{method.name}",
                GetMessageClass(method.input_type),
                GetMessageClass(method.output_type),
                method.client_streaming,
                method.server_streaming,
            )


def add_connect_routes(app: web.Application, channel: StackChannel, max_body_bytes: int) -> None:
    """`max_body_bytes`: the gRPC server's receive limit, so a body is refused here that it would refuse."""
    gateway = ConnectGateway(channel, max_body_bytes)
    for procedure in procedures():
        app.router.add_route("*", procedure.path, gateway.handler(procedure))
    package = re.escape(SERVICES[0].file.package)
    app.router.add_route("*", rf"/{{service:{package}\.[^/]+}}/{{method}}", _no_such_procedure)


async def _no_such_procedure(request: web.Request) -> web.StreamResponse:
    return ConnectError(
        grpc.StatusCode.UNIMPLEMENTED, f"no procedure {request.path[:200]} on this server", http_status=404
    ).to_response()


class ConnectGateway:
    def __init__(self, channel: StackChannel, max_body_bytes: int) -> None:
        self.channel = channel
        self.max_body_bytes = max_body_bytes

    def handler(self, procedure: Procedure) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(procedure, request)

        return handle

    async def handle(self, procedure: Procedure, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            wrong_method = f"{procedure.path} takes POST, not {request.method[:20]}"
            return ConnectError(grpc.StatusCode.UNIMPLEMENTED, wrong_method, http_status=405).to_response(
                headers={"Allow": "POST"}
            )
        streaming = procedure.client_streaming or procedure.server_streaming
        prefix = "application/connect+" if streaming else "application/"
        content_type = request.content_type
        codec = CODECS.get(content_type.removeprefix(prefix)) if content_type.startswith(prefix) else None
        if codec is None:
            expected = " or ".join(f"{prefix}{name}" for name in CODECS)
            return ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{procedure.path} takes {expected}, not {content_type[:100]!r}",
                http_status=415,
            ).to_response()
        try:
            if procedure.client_streaming:
                raise ConnectError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{procedure.path} streams from the client: it is served over gRPC only "
                    "(plain HTTP uploads: POST /uploads, PUT /uploads/{file_name})",
                )
            timeout = _timeout(request)
            body = await self._read(procedure, request)
            message = codec.decode(body, procedure.request_type)
        except ConnectError as error:
            return await _stream_error(request, codec, error) if streaming else error.to_response()
        if procedure.server_streaming:
            return await self._server_stream(procedure, request, codec, message, timeout)
        return await self._unary(procedure, request, codec, message, timeout)

    async def _read(self, procedure: Procedure, request: web.Request) -> bytes:
        try:
            if procedure.server_streaming:
                encoding = request.headers.get("Connect-Content-Encoding", "identity")
                return await read_single_message(request.content, self.max_body_bytes, encoding)
            return await read_body(request.content, request.content_length, self.max_body_bytes)
        except RequestPayloadError as error:  # e.g. a body that is not the Content-Encoding it names
            raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"the body cannot be read: {error}") from None

    async def _unary(
        self, procedure: Procedure, request: web.Request, codec: Codec, message: Message, timeout: float | None
    ) -> web.StreamResponse:
        method = self.channel.channel.unary_unary(procedure.path, _serialize, procedure.response_type.FromString)
        call = method(message, metadata=caller_metadata(request), timeout=timeout)
        try:
            reply = await reply_unless_client_leaves(request, call)
        except grpc.aio.AioRpcError as error:
            return ConnectError.from_rpc_error(error).to_response()
        if reply is None:
            return _client_left()
        return web.Response(body=codec.encode(reply), content_type=f"application/{codec.name}")

    async def _server_stream(
        self, procedure: Procedure, request: web.Request, codec: Codec, message: Message, timeout: float | None
    ) -> web.StreamResponse:
        method = self.channel.channel.unary_stream(procedure.path, _serialize, procedure.response_type.FromString)
        call = method(message, metadata=caller_metadata(request), timeout=timeout)
        response = await _start_stream(request, codec)
        end: dict[str, Any] = {}
        async with cancelled_when_client_leaves(request, call) as client:
            try:
                async for reply in call:
                    await response.write(envelope(codec.encode(reply)))
            except grpc.aio.AioRpcError as error:
                end = {"error": ConnectError.from_rpc_error(error).to_json()}
            except ConnectionError:  # a write found the client gone
                call.cancel()
                return response
            except asyncio.CancelledError:
                call.cancel()
                if not client.left:
                    raise
                return response
        await response.write(envelope(json.dumps(end).encode(), END_STREAM))
        await response.write_eof()
        return response


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _timeout(request: web.Request) -> float | None:
    """Connect-Timeout-Ms as the gRPC deadline, in seconds; absent means none."""
    version = request.headers.get("Connect-Protocol-Version")
    if version is not None and version != "1":
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"Connect-Protocol-Version {version[:20]!r}: expected 1")
    value = request.headers.get("Connect-Timeout-Ms")
    if value is None:
        return None
    if not _TIMEOUT_MS.fullmatch(value):
        raise ConnectError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Connect-Timeout-Ms {value[:20]!r}: expected up to 10 digits"
        )
    return int(value) / 1000


async def _start_stream(request: web.Request, codec: Codec) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = f"application/connect+{codec.name}"
    await response.prepare(request)
    return response


async def _stream_error(request: web.Request, codec: Codec, error: ConnectError) -> web.StreamResponse:
    """A streaming call's error: a 200 whose one envelope is the EndStreamResponse carrying it."""
    response = await _start_stream(request, codec)
    await response.write(envelope(json.dumps({"error": error.to_json()}).encode(), END_STREAM))
    await response.write_eof()
    return response


def _client_left() -> web.Response:
    """What a call whose client left answers: nobody reads it, but the handler returns like any other."""
    return ConnectError(grpc.StatusCode.CANCELLED, "the client closed its connection").to_response()
