"""InferenceService servicer (the runner lands with the inference issue)."""

from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import inference_pb2, inference_pb2_grpc

SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]


def create_servicer() -> inference_pb2_grpc.InferenceServiceServicer:
    return unbuilt_servicer(inference_pb2_grpc.InferenceServiceServicer, SERVICE)
