"""Choosing a safe file name for a download.

Every candidate comes from the remote side (a Content-Disposition header, the
URL path), so the extractors return it raw and `ferry.file_names.safe_file_name`
alone decides what may touch the disk; a name it refuses gives way to the next.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote, urlsplit

from ferry.file_names import safe_file_name

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAMETER = re.compile(rf"""\s*;\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))""")
# Only '"' and '\' are unescaped: Windows paths arrive with bare backslashes,
# and the separators have to survive for the basename rule to drop the folders.
_QUOTED_PAIR = re.compile(r'\\([\\"])')
_EXT_VALUE = re.compile(r"([^']*)'[^']*'(.*)", re.DOTALL)  # RFC 5987: charset'language'percent-encoded
_EXT_CHARSETS = {"utf-8", "iso-8859-1"}


def content_disposition_name(header: str | None) -> str | None:
    """The raw file name in a Content-Disposition header (RFC 6266), `filename*` first; None without one."""
    if header is None:
        return None
    parameters: dict[str, str] = {}
    for match in _PARAMETER.finditer(header):
        quoted, token = match[2], match[3]
        value = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token.strip()
        parameters.setdefault(match[1].lower(), value)
    extended = parameters.get("filename*")
    decoded = _decode_ext_value(extended) if extended is not None else None
    return decoded or parameters.get("filename") or None


def url_file_name(url: str) -> str | None:
    """The last path segment of `url`, percent-decoded and raw: an encoded "/" comes back as "/"."""
    segment = urlsplit(url).path.rpartition("/")[2]
    return unquote(segment) or None


def hashed_name(key: str, extension: str = "") -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32] + extension


def choose_file_name(url: str, content_disposition: str | None) -> str:
    """The server's name for the file, else the URL's, else one derived from the URL: always safe."""
    return (
        safe_file_name(content_disposition_name(content_disposition))
        or safe_file_name(url_file_name(url))
        or hashed_name(url)
    )


def _decode_ext_value(value: str) -> str | None:
    match = _EXT_VALUE.fullmatch(value)
    if match is None or match[1].lower() not in _EXT_CHARSETS:
        return None
    try:
        return unquote(match[2], encoding=match[1], errors="strict")
    except UnicodeDecodeError:  # not the charset it claims: the plain filename is the better guess
        return None
