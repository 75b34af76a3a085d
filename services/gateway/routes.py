"""The HTTP gateway's routes, added to the HTTP server's app (the CDN's)."""

from __future__ import annotations

from aiohttp import web

from ferry.services.gateway.channel import StackChannel
from ferry.services.gateway.connect import add_connect_routes
from ferry.services.gateway.playground import playground_routes
from ferry.services.gateway.queue_api import queue_routes
from ferry.services.gateway.uploads import upload_routes
from ferry.sizes import MIB


def add_gateway_routes(app: web.Application, channel: StackChannel, max_body_bytes: int = 4 * MIB) -> None:
    """Every route of the HTTP face, each a client of `channel`. `max_body_bytes`: the gRPC server's receive
    limit (`launch.max_receive_bytes`; 4 MiB is its floor)."""
    add_connect_routes(app, channel, max_body_bytes)
    app.add_routes(upload_routes(channel))
    app.add_routes(queue_routes(channel))
    app.add_routes(playground_routes())
