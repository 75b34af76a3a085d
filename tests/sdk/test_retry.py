"""The SDK's retries.

A live server answering UNAVAILABLE gets the whole budget; an address nothing answers on fails fast.

The calls go to real grpc.aio servers on loopback (the standard health service,
here and there made to answer UNAVAILABLE) and to a port nothing listens on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import ferry
from ferry import retry
from ferry.retry import call_with_retries, call_with_retries_async
from tests.harness import BackgroundLoop, socket_bound_but_not_listening

CHECK = health_pb2.HealthCheckRequest()


class UnavailableAtFirst(health.aio.HealthServicer):
    """The standard health service, answering UNAVAILABLE to its first `failures` calls.

    (A server whose storage is down.)
    """

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    async def Check(self, request, context):  # noqa: N802
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "storage is down for a moment")
        return await super().Check(request, context)


@contextmanager
def serving(loop: BackgroundLoop, servicer: health.aio.HealthServicer, address: str = "127.0.0.1:0") -> Iterator[str]:
    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port(address)
        await server.start()
        return server, port

    server, port = loop.run(start())
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.run(server.stop(None))


@pytest.fixture
def no_connect_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on an unreachable address at its first failure, so attempts (not seconds) tell the rule apart."""
    monkeypatch.setattr(retry, "CONNECT_BUDGET_SECONDS", 0.0)


def test_a_live_server_answering_unavailable_is_retried_past_the_connect_budget(background_loop, no_connect_budget):
    servicer = UnavailableAtFirst(failures=3)
    with serving(background_loop, servicer) as address, grpc.insecure_channel(address) as channel:
        response = call_with_retries(
            [health_pb2_grpc.HealthStub(channel)], lambda stub: stub.Check(CHECK), idempotent=True
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert servicer.calls == 4


async def test_the_async_twin_retries_a_live_server_past_the_connect_budget_too(background_loop, no_connect_budget):
    servicer = UnavailableAtFirst(failures=3)
    with serving(background_loop, servicer) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await call_with_retries_async([stub], lambda stub: stub.Check(CHECK), idempotent=True)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert servicer.calls == 4


def test_an_address_nothing_answers_on_is_given_up_once_the_connect_budget_is_spent(dead_address, no_connect_budget):
    attempts: list[int] = []

    def check(stub: health_pb2_grpc.HealthStub) -> health_pb2.HealthCheckResponse:
        attempts.append(1)
        return stub.Check(CHECK)

    with grpc.insecure_channel(dead_address) as channel, pytest.raises(grpc.RpcError) as caught:
        call_with_retries([health_pb2_grpc.HealthStub(channel)], check, idempotent=True)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(attempts) == 1, "no backoff rounds for an address where nothing listens"


async def test_the_async_twin_gives_up_on_an_unreachable_address_alike(dead_address, no_connect_budget):
    attempts: list[int] = []

    async def check(stub: health_pb2_grpc.HealthStub) -> health_pb2.HealthCheckResponse:
        attempts.append(1)
        return await stub.Check(CHECK)

    async with grpc.aio.insecure_channel(dead_address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            await call_with_retries_async([health_pb2_grpc.HealthStub(channel)], check, idempotent=True)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(attempts) == 1


def test_a_server_that_comes_up_after_the_first_attempt_still_gets_the_call(background_loop):
    with socket_bound_but_not_listening() as address:
        pass  # free again: the server starts on it once the first attempt has found nothing
    attempts: list[int] = []

    with ExitStack() as server:

        def check(stub: health_pb2_grpc.HealthStub) -> health_pb2.HealthCheckResponse:
            attempts.append(1)
            try:
                return stub.Check(CHECK)
            except grpc.RpcError:
                if len(attempts) == 1:
                    server.enter_context(serving(background_loop, health.aio.HealthServicer(), address))
                raise

        with grpc.insecure_channel(address) as channel:
            response = call_with_retries([health_pb2_grpc.HealthStub(channel)], check, idempotent=True)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert len(attempts) > 1


async def test_the_async_twin_waits_for_a_server_that_comes_up_alike(background_loop):
    with socket_bound_but_not_listening() as address:
        pass
    attempts: list[int] = []

    with ExitStack() as server:

        async def check(stub: health_pb2_grpc.HealthStub) -> health_pb2.HealthCheckResponse:
            attempts.append(1)
            try:
                return await stub.Check(CHECK)
            except grpc.RpcError:
                if len(attempts) == 1:
                    server.enter_context(serving(background_loop, health.aio.HealthServicer(), address))
                raise

        async with grpc.aio.insecure_channel(address) as channel:
            response = await call_with_retries_async([health_pb2_grpc.HealthStub(channel)], check, idempotent=True)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert len(attempts) > 1


# A generous bound, far above the connect budget and far below the ~15 s the full backoff takes.
WELL_BEFORE_THE_FULL_BACKOFF = 10.0


def test_an_upload_to_a_dead_address_fails_unavailable_well_before_the_full_backoff(dead_address):
    began = time.monotonic()
    with ferry.Client(dead_address) as client, pytest.raises(ferry.FerryError) as caught:
        client.upload_bytes(b"hello", "text/plain")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - began < WELL_BEFORE_THE_FULL_BACKOFF


async def test_an_async_upload_to_a_dead_address_fails_alike(dead_address):
    began = time.monotonic()
    async with ferry.AsyncClient(dead_address) as client:
        with pytest.raises(ferry.FerryError) as caught:
            await client.upload_bytes(b"hello", "text/plain")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - began < WELL_BEFORE_THE_FULL_BACKOFF
