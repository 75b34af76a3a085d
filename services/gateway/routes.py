"""The HTTP gateway's routes, added to the HTTP server's app (the CDN's)."""

from __future__ import annotations

from aiohttp import web

from ferry.services.gateway.channel import StackChannel
from ferry.services.gateway.queue_api import queue_routes


def add_gateway_routes(app: web.Application, channel: StackChannel) -> None:
    """Every route of the HTTP face, each a client of `channel`."""
    app.add_routes(queue_routes(channel))
