"""grpc.health.v1 for the hosted services: overall ("") and one status per service name."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def add_health(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """Register Health on `server`, every name in `service_names` (and "") SERVING."""
    servicer = health.aio.HealthServicer()
    for name in ("", *service_names):
        await servicer.set(name, SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
