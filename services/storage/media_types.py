"""Content types: a stored one becomes a `Content-Type` header (the CDN's, or S3's), so only a media type may.

The grammar is RFC 9110's `type "/" subtype *( OWS ";" OWS [ name "=" value ] )`,
in ASCII only (no obs-text), and the whole is bounded: a CR/LF would split the
response (aiohttp refuses to send it and drops the connection), and ordinary
HTTP clients refuse header lines past their limit (64 KiB in aiohttp and
urllib3), so a 1 MiB value would make the file unfetchable. RFC 6838 bounds
type and subtype at 127 characters each; 255 for the whole leaves room for a
parameter such as a charset and still fits every client.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from ferry.errors import InvalidArgument

MAX_CONTENT_TYPE_CHARS = 255
FALLBACK_CONTENT_TYPE = "application/octet-stream"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*")


def is_media_type(value: object) -> TypeGuard[str]:
    """True when `value` may be written into a Content-Type header as it is."""
    return isinstance(value, str) and len(value) <= MAX_CONTENT_TYPE_CHARS and _MEDIA_TYPE.fullmatch(value) is not None


def check_content_type(value: str) -> str:
    """`value`, if it is a media type within the bound; else INVALID_ARGUMENT (INVALID_CONTENT_TYPE)."""
    if not is_media_type(value):
        shown = f"{value[:40]!r}{'…' if len(value) > 40 else ''}"
        raise InvalidArgument(
            f"content type {shown} is not a media type like 'image/png' or 'text/plain; charset=utf-8' "
            f"(ASCII, at most {MAX_CONTENT_TYPE_CHARS} characters)",
            reason="INVALID_CONTENT_TYPE",
        )
    return value


# Shown in place by a browser without running anything: media, plain text, JSON. Everything else (HTML, SVG,
# XML, JavaScript, PDF, what no one has thought of yet) may carry script, and is served as a download.
_PASSIVE = re.compile(
    r"(image/(?!svg)[^;\s]+|audio/[^;\s]+|video/[^;\s]+|text/plain|application/json|application/octet-stream)"
    r"\s*(;.*)?",
    re.I | re.S,
)


def is_passive(content_type: str) -> bool:
    """Whether a browser may show a file of this type in place: it cannot run script as a page."""
    return _PASSIVE.fullmatch(content_type) is not None


def servable_content_type(value: object) -> str:
    """The Content-Type to send for a stored value: itself when it is a media type, else a safe default.

    Metadata written before content types were checked (or by a bug) must not reach a header as it is.
    """
    return value if is_media_type(value) else FALLBACK_CONTENT_TYPE
