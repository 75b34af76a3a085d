"""RFC 2397 data URIs, decoded locally and streamed into a file.

A data URI can be as large as the request that carried it, so the payload is
decoded slice by slice: memory stays at about one block however big the file is.
"""

from __future__ import annotations

import binascii
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.sizes import MIB

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 2045 token: no separators, spaces or controls
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_PARAMETER = re.compile(rf"{_TOKEN}=.*", re.DOTALL)
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCAN_CHARS = MIB

# mimetypes answers from the host's mime.types, which differ between machines
# (and once gave ".jpe" for JPEG): names of common media must not depend on that.
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/svg+xml": ".svg",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "application/json": ".json",
    "application/zip": ".zip",
    "application/octet-stream": ".bin",
}


@dataclass(frozen=True)
class DataUri:
    media_type: str  # lower-case type/subtype, parameters dropped; "text/plain" when omitted
    base64: bool
    payload_start: int  # index in the URI of the first payload character, just after the comma


def parse_data_uri(uri: str) -> DataUri:
    """Read the header of `uri`; the payload is left in place for `write_decoded`."""
    if uri[:5].lower() != "data:":
        raise _malformed("a data URI starts with 'data:'")
    comma = uri.find(",", 5)
    if comma == -1:
        raise _malformed("data URI has no ',' before its payload")
    header = uri[5:comma]
    media_type, *parameters = header.split(";")
    base64 = bool(parameters) and parameters[-1].lower() == "base64"
    if base64:
        parameters.pop()
    if (media_type and not _MEDIA_TYPE.fullmatch(media_type)) or not all(map(_PARAMETER.fullmatch, parameters)):
        raise _malformed(f"malformed media type in data URI: {header[:100]!r}")
    return DataUri(media_type.lower() or "text/plain", base64, comma + 1)


def decoded_size_bound(uri: str, parsed: DataUri) -> int:
    """How many bytes the payload decodes to, computed without decoding it.

    Exact for a well-formed payload, so refusing on it never turns away a URI
    that fits; a malformed payload is only found out while decoding, which is
    why `write_decoded` also counts what it writes.
    """
    start = parsed.payload_start
    if parsed.base64:
        padding = 2 if uri.endswith("==", start) else 1 if uri.endswith("=", start) else 0
        return (len(uri) - start - padding) * 3 // 4
    # Non-ASCII characters are written as their UTF-8 bytes, as urllib and browsers do.
    length = len(uri) - start if uri.isascii() else _utf8_length(uri, start)
    return length - 2 * uri.count("%", start)


def write_decoded(uri: str, parsed: DataUri, out: BinaryIO, *, limit: int, block_chars: int = MIB) -> int:
    """Decode the payload into `out` one block of `block_chars` characters at a time; return the bytes written.

    Raises InvalidArgument (MALFORMED_DATA_URI) or ResourceExhausted
    (DATA_URI_TOO_LARGE, more than `limit` bytes); `out` may then hold a
    partial prefix, which the caller discards.
    """
    if block_chars <= 0 or block_chars % 4:
        raise ValueError(f"block_chars must be a positive multiple of 4 (whole base64 quads), got {block_chars}")
    size = decoded_size_bound(uri, parsed)
    if size > limit:
        raise _too_large(f"data URI decodes to {size} bytes, over the limit of {limit}")
    chunks = _base64_chunks if parsed.base64 else _percent_chunks
    written = 0
    for chunk in chunks(uri, parsed.payload_start, block_chars):
        written += len(chunk)
        if written > limit:
            raise _too_large(f"data URI decodes to more than the limit of {limit} bytes")
        out.write(chunk)
    return written


def extension_for(media_type: str) -> str:
    """A file extension for `media_type` (parameters ignored), ".bin" when none is known."""
    essence = media_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(essence) or mimetypes.guess_extension(essence, strict=False) or ".bin"


def _base64_chunks(uri: str, start: int, block_chars: int) -> Iterator[bytes]:
    # Padding is checked once over the whole payload: strict decoding sees one
    # block at a time, and would take "QQ==" ending a block as the real end.
    padding_at = uri.find("=", start)
    if padding_at == -1:
        padding_at = len(uri)
    data_chars = padding_at - start
    padding = len(uri) - padding_at
    if padding > -data_chars % 4 or not uri.endswith("=" * padding):
        raise _bad_base64(uri, start, f"padding '=' at payload offset {data_chars} is not where the payload ends")
    if data_chars % 4 == 1:
        raise _bad_base64(uri, start, f"{data_chars} data characters, one more than whole bytes need")
    for block_start in range(start, len(uri), block_chars):
        yield _decode_base64_block(uri, start, block_start, min(block_start + block_chars, len(uri)))


def _percent_chunks(uri: str, start: int, block_chars: int) -> Iterator[bytes]:
    block_start = start
    while block_start < len(uri):
        block_end = min(block_start + block_chars, len(uri))
        if block_end < len(uri):
            # An escape cut by the block edge moves whole into the next block;
            # block_chars >= 4 keeps the cut past block_start, so the loop advances.
            cut = uri.rfind("%", block_end - 2, block_end)
            if cut != -1:
                block_end = cut
        yield _decode_percent_block(uri, start, block_start, block_end)
        block_start = block_end


# The block decoders slice `uri` themselves: the slice dies when they return,
# so it is freed before the next one is cut and memory stays at one block.


def _decode_base64_block(uri: str, start: int, block_start: int, block_end: int) -> bytes:
    block = uri[block_start:block_end]
    # Only the last block can fall short of a quad: data URIs in the wild often omit the final padding.
    block += "=" * (-len(block) % 4)
    try:
        return binascii.a2b_base64(block, strict_mode=True)
    except ValueError as error:
        raise _bad_base64(uri, start, str(error)) from None


def _decode_percent_block(uri: str, start: int, block_start: int, block_end: int) -> bytes:
    block = uri[block_start:block_end]
    bad = _BAD_ESCAPE.search(block)
    if bad:
        at = block_start + bad.start()
        raise _malformed(f"'%' not followed by two hex digits at payload offset {at - start}: {uri[at : at + 3]!r}")
    try:
        return unquote_to_bytes(block)
    except UnicodeEncodeError:
        raise _malformed("data URI payload holds a lone surrogate, which has no UTF-8 bytes") from None


def _utf8_length(text: str, start: int) -> int:
    # Slice by slice, so measuring never copies the whole payload.
    return sum(
        len(text[at : at + _SCAN_CHARS].encode("utf-8", "surrogatepass")) for at in range(start, len(text), _SCAN_CHARS)
    )


def _bad_base64(uri: str, start: int, problem: str) -> InvalidArgument:
    # A stray character (whitespace, the URL-safe alphabet) explains most
    # failures, padding ones included, so it is named in preference.
    bad = _NOT_BASE64.search(uri, start)
    if bad:
        problem = f"character {bad[0]!r} at payload offset {bad.start() - start}"
    return _malformed(f"malformed base64 payload in data URI: {problem}")


def _malformed(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="MALFORMED_DATA_URI")


def _too_large(message: str) -> ResourceExhausted:
    return ResourceExhausted(message, reason="DATA_URI_TOO_LARGE")
