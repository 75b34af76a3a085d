"""EncoderService servicer (the engine lands with the encoder issue)."""

from __future__ import annotations

import grpc

from ferry.services.settings import Settings
from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import encoder_pb2, encoder_pb2_grpc

SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"]


async def host(server: grpc.aio.Server, settings: Settings) -> None:
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(
        unbuilt_servicer(encoder_pb2_grpc.EncoderServiceServicer, SERVICE), server
    )
