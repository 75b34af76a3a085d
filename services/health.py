"""grpc.health.v1 for the hosted services: overall ("") and one status per service name.

Services may report more than their own name (the encoder reports each storage
backend as `ferry.v1.EncoderService/storage/<backend>`), so `List` answers
every status set, for clients that cannot guess the names.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ferry.services.rpc_context import RpcContext

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.aio.HealthServicer):
    """grpcio's asyncio servicer, plus the `List` RPC it leaves unimplemented."""

    # The type: ignores: typeshed's grpc_health stubs (types-grpcio-health-checking) know neither the List messages
    # nor the servicer's `_server_status`; grpcio-health-checking itself has both.
    async def List(
        self,
        request: health_pb2.HealthListRequest,  # type: ignore[name-defined]
        context: RpcContext,
    ) -> health_pb2.HealthListResponse:  # type: ignore[name-defined]
        # `_server_status` is the base class's declared store of what `set` was told.
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()  # type: ignore[attr-defined]
        }
        return health_pb2.HealthListResponse(statuses=statuses)  # type: ignore[attr-defined]


async def add_health(server: grpc.aio.Server, service_names: Iterable[str]) -> HealthServicer:
    """Register Health on `server`, every name in `service_names` (and "") SERVING."""
    servicer = HealthServicer()
    for name in ("", *service_names):
        await servicer.set(name, SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
