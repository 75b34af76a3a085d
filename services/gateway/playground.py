"""The playground: a static page that renders each hosted endpoint's schema as a form and runs it.

    GET /playground                 the page
    GET /playground/{asset}         its script and style sheet (only the files of the folder, by name)

The page is plain files in `playground_page/` (no build step): it lists apps with Connect's
`ListEndpoints`, uploads with `PUT /uploads/{name}`, submits and cancels through the queue API
and follows a request with Connect's `Stream`, which carries progress and partial outputs as well
as the queue position and logs. Everything it calls is on this origin, with the caller's token in
`Authorization` (kept in sessionStorage by the page, never in a URL).

The page runs under a strict Content-Security-Policy: scripts, styles and calls only from this
origin, no inline script, no framing, no plugins. Images and media may come from any http(s)
origin: outputs live wherever storage is (an S3 bucket is another origin), and a URL typed into a
file field is previewed from where it points. Media cannot run script, so this widens nothing a
page could be made to execute.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ferry.services.gateway.http_errors import json_error

PLAYGROUND_DIR = Path(__file__).resolve().parent / "playground_page"
PAGE = "index.html"
# Served by name from this table only: a request can never name a path outside the folder.
ASSETS = {
    "playground.js": "text/javascript",
    "playground.css": "text/css",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data: blob: http: https:",
        "media-src 'self' data: blob: http: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is small and changes with each release: revalidated, never served stale after an upgrade.
    "Cache-Control": "no-cache",
}


def playground_routes(folder: Path = PLAYGROUND_DIR) -> list[web.RouteDef]:
    playground = Playground(folder)
    return [
        web.get("/playground", playground.page),
        web.get("/playground/", playground.page),
        web.get("/playground/{asset}", playground.asset),
    ]


class Playground:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            self.folder / PAGE, headers={**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"}
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["asset"]
        content_type = ASSETS.get(name)
        if content_type is None:
            return json_error(404, f"no playground file {name[:100]!r}", "NOT_FOUND")
        return web.FileResponse(
            self.folder / name, headers={**SECURITY_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
        )
