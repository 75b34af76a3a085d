"""A file server that caps each connection's rate, as hosts of model weights do, in its own process.

    python bench/capped_source.py DIR MIB_PER_SECOND    # prints "port N" once listening

Each answer (whole file or one byte range) is paced to MIB_PER_SECOND on its own, so a client with several
ranged connections gets several caps' worth. Serves Range, If-Range, ETag and Last-Modified, as a file server
does, so clients may resume and split.
"""

from __future__ import annotations

import asyncio
import sys
import time
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from http_source import serve_forever

BLOCK = 256 * 1024  # pacing granularity: 12.5 ms of a 20 MiB/s connection


def _byte_range(request: web.Request, size: int, etag: str) -> tuple[int, int] | None:
    """The range asked for, or None for the whole file (no Range, or an If-Range another version's)."""
    asked = request.headers.get("Range")
    if not asked or not asked.startswith("bytes=") or "," in asked:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        return None
    first, _, last = asked.removeprefix("bytes=").partition("-")
    if not first:  # a suffix ("the last N bytes")
        return max(0, size - int(last)), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


async def _serve(request: web.Request) -> web.StreamResponse:
    root: Path = request.app["root"]
    rate: float = request.app["bytes_per_second"]
    path = (root / request.match_info["name"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound()
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": formatdate(stat.st_mtime, usegmt=True)}
    span = _byte_range(request, stat.st_size, etag)
    start, end = span or (0, stat.st_size - 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{stat.st_size}"
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    response.content_length = end - start + 1
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    began, sent = time.monotonic(), 0
    # Opening and 256 KiB reads from the page cache take microseconds: not worth a thread hop in a test source.
    with open(path, "rb") as file:  # noqa: ASYNC230
        file.seek(start)
        while sent < end - start + 1:
            block = file.read(min(BLOCK, end - start + 1 - sent))
            try:
                await response.write(block)
            except ConnectionResetError:
                return response  # the client hung up: a client that splits a file drops its first answer
            sent += len(block)
            ahead = began + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return response


def main() -> None:
    app = web.Application()
    app["root"] = Path(sys.argv[1]).resolve()
    app["bytes_per_second"] = float(sys.argv[2]) * (1 << 20)
    app.router.add_get("/{name}", _serve)  # answers HEAD too
    serve_forever(app)


if __name__ == "__main__":
    main()
