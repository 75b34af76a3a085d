"""The embedded CDN: an aiohttp app serving locally stored files over HTTP.

Reads are public (a file URL's random id is its capability); anything that
writes requires the server token. A file is served only under its exact
`/files/<id>/<name>`: the path on disk is built from the stored metadata,
never from the request, so no spelling of `..` can reach another file, and
there is nothing to list. Whatever is not a live object, expired ones
included (the sweep may not have run yet), is the same plain 404.

No stored value reaches a header unchecked: a content type that is not a
bounded media type (metadata written before uploads were checked, or by a
bug) is served as application/octet-stream. The file name reaches no header;
it is only the URL's last segment, percent-encoded.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from aiohttp import web

from ferry.services.auth import cdn_auth_middleware
from ferry.services.storage.local import LocalStorage
from ferry.services.storage.media_types import is_passive, servable_content_type

# Objects never change under their URL, so a lifetime cap is the only reason to revalidate.
FOREVER_SECONDS = 365 * 24 * 3600
LOCAL_STORAGE = web.AppKey("local_storage", LocalStorage)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _cache_control(expires_at: datetime | None, now: datetime) -> str:
    if expires_at is None:
        return f"public, max-age={FOREVER_SECONDS}, immutable"
    # Private: a shared cache could otherwise keep serving it past its expiry.
    return f"private, max-age={max(0, int((expires_at - now).total_seconds()))}"


async def _serve_file(request: web.Request) -> web.StreamResponse:
    local = request.app.get(LOCAL_STORAGE)
    if local is None:
        raise web.HTTPNotFound()
    now = local.clock()
    stored = await local.find(request.match_info["id"], now)
    if stored is None or stored.file_name != request.match_info["name"]:
        raise web.HTTPNotFound()
    content_type = servable_content_type(stored.content_type)
    headers = {
        "Content-Type": content_type,
        "Cache-Control": _cache_control(stored.expires_at, now),
        # Content types come from uploaders: browsers must not second-guess them into HTML.
        "X-Content-Type-Options": "nosniff",
        # The playground shares this origin: a stored file opened as a page runs nothing, in an origin of
        # its own. Media shown in <img>/<video>/<audio> is unaffected.
        "Content-Security-Policy": "sandbox",
    }
    if not is_passive(content_type):  # HTML, SVG, XML, script: saved, never rendered here
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(stored.file_name, safe='')}"
    # FileResponse answers Range, HEAD, ETag and conditional requests; if the
    # sweep removed the file since `find`, it answers 404 itself.
    return web.FileResponse(local.path_of(stored), headers=headers)


def create_cdn_app(
    token: str | None, local: LocalStorage | None = None, max_body_bytes: int = 1024**2
) -> web.Application:
    """`max_body_bytes` caps what any route of the app (the gateway's, beside the files) reads of a body."""
    app = web.Application(middlewares=[cdn_auth_middleware(token)] if token else [], client_max_size=max_body_bytes)
    app[MAX_BODY_BYTES] = max_body_bytes
    app.router.add_get("/healthz", _healthz)
    if local is not None:
        app[LOCAL_STORAGE] = local
    app.router.add_get("/files/{id}/{name}", _serve_file)  # GET also answers HEAD
    return app
