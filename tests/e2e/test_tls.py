"""`--tls-cert/--tls-key` serve gRPC and the CDN over TLS; the SDK trusts a CA file."""

import ssl
import urllib.request

import grpc
import pytest

import ferry
from tests.certificates import write_self_signed


@pytest.fixture
def tls_stack(start_ferry, tmp_path):
    cert, key = write_self_signed(tmp_path)
    return start_ferry("--tls-cert", str(cert), "--tls-key", str(key)), cert


def test_sdk_with_the_ca_file_talks_tls(tls_stack):
    stack, cert = tls_stack
    with ferry.Client(stack.grpc_address, ca_file=cert) as client:
        assert client.health() == "SERVING"


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_stack):
    stack, _ = tls_stack
    with ferry.Client(stack.grpc_address, tls=False) as client, pytest.raises(ferry.FerryError) as caught:
        client.health(timeout=3)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_cdn_serves_https_with_the_same_certificate(tls_stack):
    stack, cert = tls_stack
    assert stack.cdn_url.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"{stack.cdn_url}/healthz", context=context, timeout=10) as response:
        assert response.status == 200
