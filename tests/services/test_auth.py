"""With a token configured, every RPC but health and reflection needs `authorization: Bearer <token>`."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.services.auth import BearerTokenInterceptor, bearer_matches
from ferry.v1 import downloader_pb2, downloader_pb2_grpc

TOKEN = "correct horse battery staple"


@pytest.fixture(scope="module")
def grpc_interceptors():
    return [BearerTokenInterceptor(TOKEN)]


@pytest.fixture(scope="module")
def grpc_add_to_server():
    def add(servicer, server):
        downloader_pb2_grpc.add_DownloaderServiceServicer_to_server(servicer, server)
        from grpc_health.v1 import health

        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)

    return add


class ReachedTheService(downloader_pb2_grpc.DownloaderServiceServicer):
    """Answers every Read with a status only the service itself gives."""

    async def Read(self, request, context):  # noqa: N802
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "reached the service")
        yield downloader_pb2.ReadResponse()  # never reached; makes this a response stream


@pytest.fixture(scope="module")
def grpc_servicer():
    return ReachedTheService()


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return downloader_pb2_grpc.DownloaderServiceStub


def read(stub, metadata=()):
    return list(stub.Read(downloader_pb2.ReadRequest(path="x"), metadata=metadata))


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),), (("authorization", f"bearer {TOKEN}"),)],
    ids=["missing", "wrong", "no-scheme", "lowercase-scheme"],
)
def test_calls_without_the_right_token_are_unauthenticated(grpc_stub, metadata):
    with pytest.raises(grpc.RpcError) as caught:
        read(grpc_stub, metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_right_token_reaches_the_service(grpc_stub):
    with pytest.raises(grpc.RpcError) as caught:
        read(grpc_stub, (("authorization", f"Bearer {TOKEN}"),))
    assert caught.value.details() == "reached the service"


def test_health_stays_open_without_a_token(grpc_channel):
    response = health_pb2_grpc.HealthStub(grpc_channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_token_comparison_needs_the_exact_header():
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN} ", TOKEN)
    assert not bearer_matches(None, TOKEN)
    assert not bearer_matches("Bearer ", TOKEN)
