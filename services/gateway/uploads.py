"""Plain HTTP uploads into the stack's storage, for browsers and curl:

    POST /uploads              multipart/form-data, one file field (its filename and Content-Type kept)
    PUT  /uploads/{file_name}  the raw body, typed by its Content-Type

Both take `?expires_in=SECONDS` (the object's lifetime; omitted: the storage default) and stream the
body, ≤ 1 MiB at a time, into the EncoderService's own `Upload` RPC with the caller's credentials, so
its size cap, its checks and its errors are the gRPC ones. The answer is the stored `File` in protobuf's
JSON, as Connect answers it. Errors are Connect's error JSON; an upload over the cap is 413.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from aiohttp import BodyPartReader, web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format

from ferry.services.gateway.channel import StackChannel, caller_metadata
from ferry.services.gateway.connect_errors import ConnectError
from ferry.sizes import MESSAGE_BYTES
from ferry.v1 import common_pb2, encoder_pb2

UPLOAD_METHOD = "/ferry.v1.EncoderService/Upload"


def upload_routes(channel: StackChannel) -> list[web.RouteDef]:
    uploads = HttpUploads(channel)
    return [web.route("*", "/uploads", uploads.multipart), web.route("*", "/uploads/{file_name}", uploads.raw)]


class HttpUploads:
    def __init__(self, channel: StackChannel) -> None:
        self.channel = channel

    async def raw(self, request: web.Request) -> web.StreamResponse:
        if request.method != "PUT":
            return _wrong_method(request, "PUT")
        try:
            header = encoder_pb2.UploadHeader(
                file_name=request.match_info["file_name"],
                content_type=_declared_type(request.headers.get("Content-Type", "")),
                lifecycle=_lifecycle(request),
            )
            if request.content_length is not None and not _encoded(request):
                # A body cut short then fails instead of storing less. An encoded (e.g. gzip) body's length is
                # not the file's: aiohttp decodes it, and the encoder's size cap still holds.
                header.file_size = request.content_length
            return await self._upload(request, header, request.content.iter_chunked(MESSAGE_BYTES))
        except ConnectError as error:
            return _refusal(error)

    async def multipart(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _wrong_method(request, "POST")
        try:
            if request.content_type != "multipart/form-data":
                raise ConnectError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"POST /uploads takes multipart/form-data, not {request.content_type[:100]!r}",
                    http_status=415,
                )
            lifecycle = _lifecycle(request)
            part = await _file_part(request)
            header = encoder_pb2.UploadHeader(
                file_name=_text(part.filename or "", "file name"),
                content_type=_declared_type(part.headers.get("Content-Type", "")),
                lifecycle=lifecycle,
            )
            return await self._upload(request, header, _part_chunks(part))
        except ConnectError as error:
            return _refusal(error)

    async def _upload(
        self, request: web.Request, header: encoder_pb2.UploadHeader, chunks: AsyncIterator[bytes]
    ) -> web.StreamResponse:
        unread: list[ConnectError] = []

        async def messages() -> AsyncIterator[encoder_pb2.UploadRequest]:
            yield encoder_pb2.UploadRequest(header=header)
            try:
                async for chunk in chunks:
                    yield encoder_pb2.UploadRequest(chunk=chunk)
            except (ValueError, ConnectionError, asyncio.IncompleteReadError, RequestPayloadError) as error:
                # Raising here cancels the call: the server discards what it has, nothing partial is stored.
                unread.append(ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"the body cannot be read: {error}"))
                raise

        call = self.channel.channel.stream_unary(
            UPLOAD_METHOD,
            request_serializer=encoder_pb2.UploadRequest.SerializeToString,
            response_deserializer=encoder_pb2.UploadResponse.FromString,
        )(messages(), metadata=caller_metadata(request))
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            raise ConnectError.from_rpc_error(error) from None
        except asyncio.CancelledError:
            if not unread:
                raise
            raise unread[0] from None
        return web.json_response(json_format.MessageToDict(reply.file))


def _wrong_method(request: web.Request, method: str) -> web.Response:
    message = f"{request.path[:200]} takes {method}, not {request.method[:20]}"
    return ConnectError(grpc.StatusCode.UNIMPLEMENTED, message, http_status=405).to_response(headers={"Allow": method})


def _refusal(error: ConnectError) -> web.Response:
    """Connect's error JSON; over the size cap is 413 (Payload Too Large), which clients do not retry as 429."""
    if error.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        error.http_status = 413
    return error.to_response()


def _encoded(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")


def _declared_type(content_type: str) -> str:
    """The type to store, or "" to let the encoder guess it from the file name: `application/octet-stream`
    is what curl and browsers send for a file whose type they do not know, so it says nothing."""
    if content_type.split(";")[0].strip().lower() == "application/octet-stream":
        return ""
    return _text(content_type, "content type")


def _text(value: str, what: str) -> str:
    """`value`, which protobuf can carry: aiohttp reads a header's non-UTF-8 bytes as lone surrogates, which
    protobuf refuses with UnicodeEncodeError (a 500, were it not caught here)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"the {what} {value[:40]!r} is not UTF-8") from None
    return value


def _lifecycle(request: web.Request) -> common_pb2.Lifecycle:
    value = request.query.get("expires_in")
    if value is None:
        return common_pb2.Lifecycle()
    if not value.isascii() or not value.isdigit() or len(value) > 12 or int(value) == 0:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"expires_in {value[:20]!r}: expected whole seconds > 0")
    return common_pb2.Lifecycle(expiration_seconds=int(value))


async def _file_part(request: web.Request) -> BodyPartReader:
    """The form's first file field (fields before it are skipped)."""
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.filename:
                return part
            await part.release()
    except (ValueError, AssertionError, ConnectionError) as error:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"the form cannot be read: {str(error)[:200]}") from None
    raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "the form has no file field (a part with a filename)")


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(MESSAGE_BYTES):
        yield chunk
    if not part.at_eof():  # aiohttp ends a part at the body's end too: a form cut short would be stored whole
        raise ValueError("the form ends before the file part's boundary")
