"""The names stored files get, from the name a caller asked for (or none)."""

from __future__ import annotations

import mimetypes
import os

from ferry.errors import InvalidArgument
from ferry.file_names import MAX_NAME_BYTES, safe_file_name

# Room after an Encode's base name for "-<index>" and the longest extension (".jpeg"), within 255 bytes.
BASE_NAME_BYTES = MAX_NAME_BYTES - 16


def safe_name(requested: str) -> str:
    """The basename of the caller's file name, cut to 255 bytes; INVALID_ARGUMENT if nothing safe is left."""
    name = safe_file_name(requested)
    if name is None:
        shown = f"{requested[:40]!r}{'…' if len(requested) > 40 else ''}"
        raise InvalidArgument(
            f"file name {shown} is not a safe basename: no control characters, not empty, '.' or '..'",
            reason="BAD_FILE_NAME",
        )
    return name


def base_name(requested: str) -> str:
    """An Encode's stored name without index and extension: the caller's, made safe and short enough, else "output"."""
    if not requested:
        return "output"
    stem = os.path.splitext(safe_name(requested))[0]
    return stem.encode()[:BASE_NAME_BYTES].decode(errors="ignore")  # "ignore": a character the cut split in half


def upload_name(requested: str, content_type: str) -> str:
    """An upload's stored name: the caller's, made safe, else "upload" with the content type's extension."""
    return safe_name(requested) if requested else "upload" + (mimetypes.guess_extension(content_type) or ".bin")
