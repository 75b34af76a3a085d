"""A base URL and the URLs under it, compared the way a server behind it would route them.

The stack recognises its own URLs (the local CDN's, a bucket's public base, a
trusted CDN origin) by this one rule: same scheme, host and port, and the
base's path segments first. Paths are compared after yarl has removed dot
segments (`%2e%2e` included), and a segment that still decodes to a separator
or a dot segment disqualifies the URL, so no spelling of `..` walks out from
under the base. URLs with credentials in them are nobody's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import yarl


@dataclass(frozen=True)
class UrlPrefix:
    scheme: str
    host: str
    port: int | None
    segments: tuple[str, ...]  # decoded

    @classmethod
    def parse(cls, base: str) -> UrlPrefix:
        """The prefix `base` names; ValueError unless it is an http(s) URL with a host."""
        url = yarl.URL(base)
        if url.scheme not in ("http", "https") or not url.host or url.user is not None:
            raise ValueError(f"{base[:200]!r} is not an http(s) base URL")
        segments = _segments(url)
        if segments is None:
            raise ValueError(f"{base[:200]!r} has a path no server routes plainly")
        while segments and not segments[-1]:
            segments = segments[:-1]  # "https://cdn.example/media/" is the prefix "/media"
        return cls(url.scheme, url.host.lower(), url.port, segments)

    def rest(self, url: str | yarl.URL) -> tuple[str, ...] | None:
        """The decoded path segments of `url` after this prefix, or None when `url` is not under it."""
        try:
            parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        except (TypeError, ValueError):
            return None
        if (parsed.scheme, (parsed.host or "").lower(), parsed.port) != (self.scheme, self.host, self.port):
            return None
        if parsed.user is not None or parsed.password is not None:
            return None
        segments = _segments(parsed)
        if segments is None or segments[: len(self.segments)] != self.segments:
            return None
        return segments[len(self.segments) :]

    def covers(self, url: str | yarl.URL) -> bool:
        return self.rest(url) is not None


def _segments(url: yarl.URL) -> tuple[str, ...] | None:
    parts = url.raw_parts[1:] if url.raw_parts[:1] == ("/",) else url.raw_parts
    decoded = tuple(unquote(part) for part in parts)
    if any("/" in part or part in (".", "..") for part in decoded):
        return None
    return decoded
