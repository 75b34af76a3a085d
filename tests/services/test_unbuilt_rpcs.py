"""RPCs whose issue has not landed answer UNIMPLEMENTED naming themselves: nothing pretends to work.

Once a service lands, its RPCs leave this list (the test reads the live list).
"""

import grpc
import pytest
from grpc_status import rpc_status

from ferry.services.launch import SERVICES
from ferry.services.unbuilt import unbuilt_servicer
from ferry.v1 import encoder_pb2, encoder_pb2_grpc


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return encoder_pb2_grpc.add_EncoderServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer():
    return unbuilt_servicer(encoder_pb2_grpc.EncoderServiceServicer, encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"])


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return encoder_pb2_grpc.EncoderServiceStub


def test_unary_rpc_names_itself(grpc_stub):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.CreateUpload(encoder_pb2.CreateUploadRequest(file_name="a.bin"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "ferry.v1.EncoderService/CreateUpload is not built yet"
    assert rpc_status.from_call(caught.value).details, "the status carries an ErrorInfo"


def test_client_streaming_rpc_names_itself(grpc_stub):
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.Encode(iter([encoder_pb2.EncodeRequest(chunk=b"x")]))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ferry.v1.EncoderService/Encode" in caught.value.details()


def test_every_hosted_service_is_in_the_launcher():
    assert [s.full_name for s in SERVICES.values()] == [
        "ferry.v1.DownloaderService",
        "ferry.v1.EncoderService",
        "ferry.v1.InferenceService",
    ]
