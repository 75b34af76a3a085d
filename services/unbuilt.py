"""Servicers for RPCs whose issue has not landed yet: each answers UNIMPLEMENTED naming itself.

Nothing pretends to work: a caller learns exactly which RPC is missing. A
service's real servicer replaces its entry here when its issue lands.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ferry.services.errors import abort


def unbuilt_servicer(base: type, service: ServiceDescriptor) -> Any:
    """An instance of the generated servicer `base` whose every RPC answers UNIMPLEMENTED."""

    def answer_unimplemented(rpc: str) -> Any:
        async def method(self: Any, _request: Any, context: grpc.aio.ServicerContext) -> None:
            await abort(context, grpc.StatusCode.UNIMPLEMENTED, "NOT_BUILT", f"{rpc} is not built yet")

        return method

    methods = {m.name: answer_unimplemented(f"{service.full_name}/{m.name}") for m in service.methods}
    return type(f"Unbuilt{service.name}", (base,), methods)()
