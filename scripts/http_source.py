"""A local file server for benchmarks and the demo, in its own process so it never competes with the measured one.

python scripts/http_source.py DIR    # prints "port N" once listening
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web


async def _serve_file(request: web.Request) -> web.StreamResponse:
    root: Path = request.app["root"]
    path = (root / request.match_info["name"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)  # sendfile, Range, ETag: the best case for any client


def serve_forever(app: web.Application) -> None:
    """Serve `app` on a free loopback port, printing "port N" once listening (what the benchmarks read)."""
    runner = web.AppRunner(app, access_log=None)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"port {runner.addresses[0][1]}", flush=True)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    loop.run_forever()


def main() -> None:
    app = web.Application()
    app["root"] = Path(sys.argv[1]).resolve()
    app.router.add_get("/{name}", _serve_file)  # answers HEAD too
    serve_forever(app)


if __name__ == "__main__":
    main()
