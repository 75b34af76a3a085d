"""InferenceService servicer (the runner lands with the inference issue)."""

from __future__ import annotations

import grpc

from ferry.services.settings import Settings
from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import inference_pb2, inference_pb2_grpc

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]


async def host(server: grpc.aio.Server, settings: Settings) -> None:
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(
        unbuilt_servicer(inference_pb2_grpc.InferenceServiceServicer, SERVICE), server
    )
