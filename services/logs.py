"""How `ferry serve` writes its log: human-readable lines or one JSON object a line, each naming its request.

Every record passes one filter, `RequestFields`, which stamps it with the
request it was emitted for (`request_id`, `app`) from the request scope the
runner opens around a request (`ferry.request_scope`): runner, input
downloads, the handler's `context.log` and its plain `logging` calls all carry
them without passing anything. A record that already names them (`extra=`)
keeps its own.

Both formats scrub the rendered line: a URL keeps its scheme, host, port and
path but loses its userinfo, query and fragment (a presigned URL's
signature, a source's `?token=`), and a bearer token is replaced. Call sites
log URLs through `url_for_log` already; this catches what they cannot
control (exception texts, a handler's own lines).

Trace correlation: while tracing is on (`ferry.services.tracing`) and a span is
current, its ids go into the JSON line. With tracing off, OpenTelemetry is never
imported: importing it would make the SDK's channels carry trace context.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from ferry.request_scope import current_scope
from ferry.services import tracing

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "RequestFields",
    "TextFormatter",
    "configure_logging",
    "scrub",
    "url_for_log",
]

LOG_FORMATS = ("text", "json")

# A URL in free text: a scheme, then anything up to whitespace or a quote/bracket that usually ends it.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
# `Bearer TOKEN` (an authorization header's value, wherever it got into a message).
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/=]+")
REDACTED = "[redacted]"


def url_for_log(url: str) -> str:
    """`url` as a log line may show it: scheme, host, port and path; no userinfo, query or fragment.

    What is left names the source well enough to find it, and holds none of
    the secrets URLs carry (presigned signatures, `?token=`, `user:pass@`).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL we can take apart: show none of it rather than all of it
        return REDACTED
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0].split("#", 1)[0]
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str) -> str:
    """`text` with every URL passed through `url_for_log` and every bearer token replaced."""
    if "://" in text:
        text = _URL.sub(lambda match: url_for_log(match.group(0)), text)
    return _BEARER.sub(lambda match: match.group(1) + REDACTED, text)


class RequestFields(logging.Filter):
    """Stamps every record with the request it was emitted for (None outside one); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = current_scope()
        if getattr(record, "request_id", None) is None:
            record.request_id = scope.request_id
        if getattr(record, "app", None) is None:
            record.app = scope.app
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, request_id, app; the current
    span's trace_id and span_id when tracing is on; exc_info as text when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None),
        }
        if (app := getattr(record, "app", None)) is not None:
            line["app"] = app
        if (span := tracing.current_ids()) is not None:
            line["trace_id"], line["span_id"] = span
        if record.exc_info:
            line["exc_info"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc_info"] = scrub(record.exc_text)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: MESSAGE`, then `[request=ID app=APP]` for a line about a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            app = getattr(record, "app", None)
            suffix = f" [request={request_id}" + (f" app={app}]" if app is not None else "]")
            head, newline, rest = line.partition("\n")  # after the message, before any traceback
            line = head + suffix + newline + rest
        return scrub(line)


def configure_logging(log_format: str, stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    """Send the root logger's records to `stream` in `log_format` (one of `LOG_FORMATS`, as `ServerConfig`
    checked it), each naming its request."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestFields())  # on the handler: records of every logger pass it, child loggers included
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
