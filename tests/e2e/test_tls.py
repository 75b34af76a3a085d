"""`--tls-cert/--tls-key` serve gRPC and the CDN over TLS; the SDK trusts a CA file."""

import datetime
import ipaddress
import ssl
import urllib.request

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ferry


def _write_self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_stack(start_ferry, tmp_path):
    cert, key = _write_self_signed(tmp_path)
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
