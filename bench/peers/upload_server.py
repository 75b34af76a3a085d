"""Where cog's `--upload-url` PUTs its outputs: each file stored durably, then served back by GET.

    python upload_server.py DIR    # prints "port N" once listening

Stored as Ferry's local CDN stores: a temp file beside the target, fsync, rename; the answer's
Location header is the URL coglet returns as the prediction's output.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from aiohttp import web


async def _store(request: web.Request) -> web.Response:
    root: Path = request.app["root"]
    name = Path(request.match_info["name"]).name
    body = await request.read()
    await asyncio.to_thread(_write_durably, root / name, body)
    location = f"http://{request.host}/{name}"
    return web.Response(status=201, headers={"Location": location})


def _write_durably(target: Path, body: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(out.name, target)


async def _serve(request: web.Request) -> web.StreamResponse:
    path = request.app["root"] / Path(request.match_info["name"]).name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def main() -> None:
    app = web.Application(client_max_size=64 << 20)
    app["root"] = Path(sys.argv[1]).resolve()
    app.router.add_put("/{name}", _store)
    app.router.add_get("/{name}", _serve)
    runner = web.AppRunner(app, access_log=None)
    loop = asyncio.new_event_loop()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(f"port {runner.addresses[0][1]}", flush=True)

    loop.run_until_complete(start())
    loop.run_forever()


if __name__ == "__main__":
    main()
