"""The one rule for a file name that is safe to create inside a folder.

Every name here comes from somewhere untrusted: a server's Content-Disposition
or URL (the downloader), a caller asking to store a file (the encoder, storage),
a stored file's JSON (the SDK saving it locally). Each caller keeps its own
answer to a name that is not safe — the downloader falls back to another name,
the encoder refuses the request, storage refuses anything not already safe as
it stands, the SDK raises — but what "safe" means is decided here, once:

- only the basename counts: anything up to the last `/` or `\\` is dropped
  (a name from a Windows client carries backslashes);
- no control characters, no surrounding spaces;
- not empty, not `.`, and not starting with `..` (names that look like parent
  references are not worth the doubt);
- at most `MAX_NAME_BYTES` of UTF-8, cut at a whole character, keeping the
  extension where it fits.
"""

from __future__ import annotations

import os.path
import re

__all__ = ["MAX_NAME_BYTES", "is_safe_file_name", "safe_file_name"]

MAX_NAME_BYTES = 255  # NAME_MAX of Linux and most file systems, counted in bytes

_SEPARATORS = re.compile(r"[/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_file_name(candidate: str | None) -> str | None:
    """The basename of `candidate` if it is safe to create inside a target folder, else None."""
    if candidate is None:
        return None
    name = _SEPARATORS.split(candidate)[-1]
    if _CONTROL.search(name):
        return None
    name = name.strip()
    if name in ("", ".") or name.startswith(".."):
        return None
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 bytes to name a file with
        return None
    return name if size <= MAX_NAME_BYTES else _truncated(name)


def is_safe_file_name(name: str) -> bool:
    """Whether `name` is safe exactly as it stands: what is stored verbatim, with nothing dropped or cut."""
    return safe_file_name(name) == name


def _truncated(name: str) -> str:
    stem, extension = os.path.splitext(name)
    budget = MAX_NAME_BYTES - len(extension.encode())
    if budget < 1:  # an "extension" that long is just more of the name
        stem, extension, budget = name, "", MAX_NAME_BYTES
    # "ignore" drops a character that the cut split in half.
    return stem.encode()[:budget].decode(errors="ignore") + extension
