"""`ferry serve`: one gRPC port with all services, health, reflection and the CDN; clean shutdown."""

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import ferry
from ferry.client import SERVICE_NAMES
from ferry.v1 import downloader_pb2

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^ferry ready grpc=127\.0\.0\.1:(\d+) cdn=http://127\.0\.0\.1:(\d+)$")


def test_ready_line_names_both_ports(ferry_serve):
    match = READY.match(ferry_serve.ready_line)
    assert match, ferry_serve.ready_line
    assert all(int(port) > 0 for port in match.groups())


def test_health_is_serving_overall_and_per_service(ferry_serve):
    with ferry.Client(ferry_serve.grpc_address) as client:
        assert client.health() == "SERVING"
        for name in SERVICE_NAMES:
            assert client.health(name) == "SERVING"
        with pytest.raises(ferry.FerryError) as caught:
            client.health("ferry.v1.NoSuchService")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_three_services(ferry_serve):
    with grpc.insecure_channel(ferry_serve.grpc_address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert set(SERVICE_NAMES) <= services


FERRY = str(Path(sys.executable).parent / "ferry")  # the console script beside this interpreter
BUF = ROOT / "node_modules" / ".bin" / "buf"


@pytest.mark.skipif(not BUF.exists(), reason="buf comes from `npm ci` (make test installs it)")
def test_buf_curl_reaches_health_and_reflection(ferry_serve):
    base = f"http://{ferry_serve.grpc_address}"
    curl = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    health = subprocess.run([*curl, f"{base}/grpc.health.v1.Health/Check"], capture_output=True, text=True, check=True)
    assert '"status": "SERVING"' in health.stdout
    listing = subprocess.run([*curl, "--list-services", base], capture_output=True, text=True, check=True)
    assert set(SERVICE_NAMES) <= set(listing.stdout.split())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_drain_in_flight_calls_then_exit_zero(ferry_serve, signum):
    channel = grpc.insecure_channel(ferry_serve.grpc_address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAMES[0]))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    ferry_serve.signal(signum)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING, "watchers learn of the drain"
    with pytest.raises(subprocess.TimeoutExpired):
        ferry_serve.wait(timeout=1)  # still draining: the Watch call is in flight
    watch.cancel()
    assert ferry_serve.wait(timeout=10) == 0
    channel.close()


def test_environment_configures_the_server(start_ferry, tmp_path):
    data_dir = tmp_path / "from-env"
    stack = start_ferry(env={"FERRY_DATA_DIR": str(data_dir), "FERRY_TOKEN": "t0ken"})
    # The fixture passes --data-dir, which wins; the token comes from the environment.
    with ferry.Client(stack.grpc_address, token="wrong") as client, pytest.raises(grpc.RpcError) as caught:
        list(client.downloader.Read(downloader_pb2.ReadRequest(path="x")))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_serving_a_single_service(start_ferry):
    stack = start_ferry("downloader")
    assert "cdn=" not in stack.ready_line, "only the encoder's storage needs the CDN"
    with ferry.Client(stack.grpc_address) as client:
        assert client.health("ferry.v1.DownloaderService") == "SERVING"
        with pytest.raises(ferry.FerryError) as caught:
            client.health("ferry.v1.EncoderService")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_unknown_service_name_is_refused(tmp_path):
    result = subprocess.run(
        [FERRY, "serve", "uploader", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "unknown service uploader" in result.stderr


class TestToken:
    TOKEN = "s3cret-token"

    @pytest.fixture
    def stack(self, start_ferry):
        return start_ferry("--token", self.TOKEN)

    def test_sdk_sends_ferry_token_from_the_environment(self, stack, monkeypatch):
        monkeypatch.setenv("FERRY_TOKEN", self.TOKEN)
        with ferry.Client(stack.grpc_address) as client, pytest.raises(grpc.RpcError) as caught:
            list(client.downloader.Read(downloader_pb2.ReadRequest(path="x")))
        assert caught.value.code() != grpc.StatusCode.UNAUTHENTICATED

    def test_calls_without_token_are_refused_but_health_answers(self, stack, monkeypatch):
        monkeypatch.delenv("FERRY_TOKEN", raising=False)
        with ferry.Client(stack.grpc_address) as client:
            assert client.health() == "SERVING"
            with pytest.raises(grpc.RpcError) as caught:
                list(client.downloader.Read(downloader_pb2.ReadRequest(path="x")))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_async_client_sends_the_token(self, stack):
        async with ferry.AsyncClient(stack.grpc_address, token=self.TOKEN) as client:
            call = client.downloader.Read(downloader_pb2.ReadRequest(path="x"))
            with pytest.raises(grpc.RpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() != grpc.StatusCode.UNAUTHENTICATED
        async with ferry.AsyncClient(stack.grpc_address, token="wrong") as client:
            call = client.downloader.Read(downloader_pb2.ReadRequest(path="x"))
            with pytest.raises(grpc.RpcError) as caught:
                async for _ in call:
                    pass
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_cdn_writes_need_the_token_reads_do_not(self, stack):
        upload = urllib.request.Request(f"{stack.cdn_url}/files/x", data=b"hi", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(upload, timeout=10)
        assert caught.value.code == 401
        upload.add_header("Authorization", f"Bearer {self.TOKEN}")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(upload, timeout=10)
        assert caught.value.code != 401, "past auth: the route decides"
        with urllib.request.urlopen(f"{stack.cdn_url}/healthz", timeout=10) as response:
            assert response.status == 200


def test_console_script_is_installed():
    result = subprocess.run([FERRY, "--help"], capture_output=True, text=True, check=True)
    assert "serve" in result.stdout and "health" in result.stdout
