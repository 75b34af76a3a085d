"""Connect's streaming envelope: one byte of flags, the message's length as 4 bytes big-endian, the message.

Flag 0x01 marks a compressed message, 0x02 the EndStreamResponse that ends every response stream
(connectrpc.com/docs/protocol, "Streaming-Request"). Request bodies are read against a cap: a length
prefix or a Content-Length over it is refused before the bytes arrive.
"""

from __future__ import annotations

import asyncio
import struct
import zlib

import grpc
from aiohttp import StreamReader

from ferry.services.gateway.connect_errors import ConnectError

COMPRESSED = 0x01
END_STREAM = 0x02
_PREFIX = struct.Struct(">BI")


def envelope(data: bytes, flags: int = 0) -> bytes:
    return _PREFIX.pack(flags, len(data)) + data


def too_large(limit: int) -> ConnectError:
    return ConnectError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request body is over this server's {limit} bytes")


async def read_body(content: StreamReader, declared_length: int | None, limit: int) -> bytes:
    """The whole body of a unary request, refused as soon as it (or its Content-Length) passes `limit`."""
    if declared_length is not None and declared_length > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def read_single_message(content: StreamReader, limit: int, encoding: str) -> bytes:
    """The one enveloped message a server-streaming request carries; `encoding` is its
    Connect-Content-Encoding (identity or gzip)."""
    prefix = await _read_exactly(content, _PREFIX.size, "its envelope's 5-byte prefix")
    flags, length = _PREFIX.unpack(prefix)
    if flags & ~COMPRESSED:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"a request envelope with flags {flags:#04x}")
    if length > limit:
        raise too_large(limit)
    message = await _read_exactly(content, length, f"the {length} bytes its envelope declares")
    if await content.read(1):
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "this method takes one request message, not several")
    if flags & COMPRESSED:
        if encoding != "gzip":
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT, "a compressed envelope without Connect-Content-Encoding: gzip"
            )
        return _gunzip(message, limit)
    return message


async def _read_exactly(content: StreamReader, size: int, what: str) -> bytes:
    try:
        return await content.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, f"the request body ends before {what}") from None


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        plain = inflater.decompress(data, limit + 1)  # never more than the cap, whatever the ratio
    except zlib.error:
        raise ConnectError(grpc.StatusCode.INVALID_ARGUMENT, "the request message is not valid gzip") from None
    if len(plain) > limit or inflater.unconsumed_tail:
        raise too_large(limit)
    return plain
