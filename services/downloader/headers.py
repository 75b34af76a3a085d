"""The request headers a caller may have a download send, checked before anything connects.

aiohttp refuses CR and LF in a header itself, but only while it writes the
request, after it has connected to the source, and with a `ValueError` that
would end the call INTERNAL. So every header is checked here first: names are
HTTP tokens, values hold no control characters (tab aside), and both are of a
size a server accepts. Headers that frame the request or pick its target are
the downloader's own: a caller's `Content-Length` or `Transfer-Encoding` could
desynchronise a pooled connection, a `Host` could steer a shared origin (the
trusted CDN's included) to another site behind it, and `Range`, `If-Range` or
`Accept-Encoding` would undo resuming and storing the bytes as served.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ferry.errors import InvalidArgument

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: field values are visible characters, spaces and tabs; CR, LF, NUL and the rest of C0 and DEL are not.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_HEADERS = 64
MAX_NAME_CHARS = 256
MAX_VALUE_CHARS = 8192  # a common server limit on one header line (nginx, Apache: 8 KiB)
SHOWN_CHARS = 40  # of a refused name: enough to find it, never the whole of a hostile one
RESERVED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "range",
        "if-range",
        "accept-encoding",
    }
)


def _shown(name: str) -> str:
    return repr(name[:SHOWN_CHARS] + ("…" if len(name) > SHOWN_CHARS else ""))


def _refuse(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="INVALID_HEADER")


def check_request_headers(headers: Mapping[str, str]) -> None:
    """Raise InvalidArgument (reason INVALID_HEADER) unless every header may be sent as given."""
    if len(headers) > MAX_HEADERS:
        raise _refuse(f"{len(headers)} request headers: at most {MAX_HEADERS} may be sent")
    for name, value in headers.items():
        if len(name) > MAX_NAME_CHARS:
            raise _refuse(f"header name {_shown(name)} is over {MAX_NAME_CHARS} characters")
        if not _TOKEN.fullmatch(name):
            raise _refuse(f"header name {_shown(name)} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)")
        if name.lower() in RESERVED:
            raise _refuse(f"header {_shown(name)} is set by the downloader, not by callers")
        if len(value) > MAX_VALUE_CHARS:
            raise _refuse(f"the value of header {_shown(name)} is over {MAX_VALUE_CHARS} characters")
        if _CONTROL.search(value):
            raise _refuse(f"the value of header {_shown(name)} holds a control character (CR, LF, NUL, …)")
