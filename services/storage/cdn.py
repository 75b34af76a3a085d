"""The embedded CDN: an aiohttp app serving locally stored files over HTTP.

Reads are public (a file URL's random id is its capability); anything that
writes requires the server token. Files are served once the storage issue
lands; until then `/files/…` answers 404 like an unknown id.
"""

from __future__ import annotations

from aiohttp import web

from ferry.services.auth import cdn_auth_middleware


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_cdn_app(token: str | None) -> web.Application:
    app = web.Application(middlewares=[cdn_auth_middleware(token)] if token else [])
    app.router.add_get("/healthz", _healthz)
    return app
