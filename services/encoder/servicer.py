"""EncoderService servicer (the engine lands with the encoder issue)."""

from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import encoder_pb2, encoder_pb2_grpc

SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"]


def create_servicer() -> encoder_pb2_grpc.EncoderServiceServicer:
    return unbuilt_servicer(encoder_pb2_grpc.EncoderServiceServicer, SERVICE)
