"""RPCs whose issue has not landed answer UNIMPLEMENTED naming themselves: nothing pretends to work.

Once a service lands, its RPCs leave this list (the test reads the live list).
"""

import grpc
import pytest
from grpc_status import rpc_status

from ferry.services.launch import SERVICES
from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import inference_pb2, inference_pb2_grpc


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return inference_pb2_grpc.add_InferenceServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer():
    service = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
    return unbuilt_servicer(inference_pb2_grpc.InferenceServiceServicer, service)


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return inference_pb2_grpc.InferenceServiceStub


def test_unary_rpc_names_itself(grpc_stub):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.Submit(inference_pb2.SubmitRequest(app_id="x"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "ferry.v1.InferenceService/Submit is not built yet"
    assert rpc_status.from_call(caught.value).details, "the status carries an ErrorInfo"


def test_bidirectional_rpc_names_itself(grpc_stub):
    with pytest.raises(grpc.RpcError) as caught:
        list(grpc_stub.Realtime(iter([inference_pb2.RealtimeRequest(input_json="{}")])))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ferry.v1.InferenceService/Realtime" in caught.value.details()


def test_every_hosted_service_is_in_the_launcher():
    assert [s.full_name for s in SERVICES.values()] == [
        "ferry.v1.DownloaderService",
        "ferry.v1.EncoderService",
        "ferry.v1.InferenceService",
    ]
