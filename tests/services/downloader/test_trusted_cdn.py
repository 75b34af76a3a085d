"""A downloader running apart from the encoder trusts the stack's CDN as configured: that origin and path, nothing more.

The configured CDN here is a real HTTP server on loopback, under `/cdn`; the
guard is the default one (loopback refused), with only the name `localhost`
allowed so that the function-scoped test server can play an outside site.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from aiohttp import web

import ferry
from ferry.services.config import DownloaderConfig, StorageConfig
from ferry.services.downloader.engine import Downloader
from tests.harness import HttpFileServer
from tests.services.downloader.helpers import events

CONFIG = DownloaderConfig(allow_hosts="localhost", retries=0)


@pytest.fixture(scope="module")
def cdn(tmp_path_factory, background_loop):
    root = tmp_path_factory.mktemp("cdn")
    server = HttpFileServer(root)
    background_loop.run(server.start())
    server.add_file("cdn/files/abc/photo.png", b"from the stack's CDN")
    server.add_file("private/secret.txt", b"not the CDN's")
    server.add_file("cdnx/lookalike.txt", b"not under /cdn")
    yield server
    background_loop.run(server.stop())


@pytest.fixture(scope="module")
def downloader(tmp_path_factory, cdn, background_loop):
    downloader = Downloader(CONFIG, tmp_path_factory.mktemp("data"), trusted_cdn_url=cdn.url("/cdn"))
    yield downloader
    background_loop.run(downloader.close())


@pytest.fixture(autouse=True)
def forget_requests(cdn) -> None:
    cdn.requests.clear()


def refusal(stub, **fields) -> ferry.FerryError:
    with pytest.raises(grpc.RpcError) as caught:
        events(stub, **fields)
    return ferry.FerryError.from_rpc_error(caught.value)


def test_a_url_under_the_configured_cdn_is_fetched_over_http_past_the_guard(grpc_stub, cdn):
    done = events(grpc_stub, url=cdn.url("/cdn/files/abc/photo.png"), target_dir="trusted")[-1].completed
    assert Path(done.path).read_bytes() == b"from the stack's CDN"
    assert cdn.gets("/cdn/files/abc/photo.png"), "over HTTP: the CDN served it"


@pytest.mark.parametrize(
    "path",
    ["/private/secret.txt", "/cdn/../private/secret.txt", "/cdn/%2e%2e/private/secret.txt", "/cdnx/lookalike.txt"],
)
def test_another_path_on_the_cdns_origin_meets_the_guard(grpc_stub, cdn, path):
    error = refusal(grpc_stub, url=cdn.base_url + path, target_dir="outside")
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")
    assert cdn.requests == []


def test_the_cdns_host_on_another_port_meets_the_guard(grpc_stub, http_server):
    http_server.add_file("cdn/files/abc/photo.png", b"another server")
    error = refusal(grpc_stub, url=http_server.url("/cdn/files/abc/photo.png"))
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")
    assert http_server.requests == []


def test_a_redirect_from_an_outside_url_to_the_cdn_is_still_guarded(grpc_stub, cdn, http_server):
    async def to_the_cdn(_request):
        raise web.HTTPFound(cdn.url("/cdn/files/abc/photo.png"))

    outside = http_server.route("/innocent", to_the_cdn).replace("127.0.0.1", "localhost")
    error = refusal(grpc_stub, url=outside, target_dir="redirected")
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")
    assert http_server.hits.get("/innocent") == 1 and cdn.requests == []


def test_a_redirect_from_the_cdn_elsewhere_on_its_host_is_guarded(grpc_stub, cdn):
    async def away(_request):
        raise web.HTTPFound(cdn.url("/private/secret.txt"))

    url = cdn.route("/cdn/away", away)
    error = refusal(grpc_stub, url=url, target_dir="away")
    assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADDRESS_BLOCKED")
    assert cdn.gets("/private/secret.txt") == []


@pytest.mark.parametrize(("flag", "field"), [("--public-url", "public_url"), ("--s3-public-url", "s3_public_url")])
def test_a_cdn_base_that_is_not_an_http_url_is_refused_when_the_stack_is_configured(flag, field):
    with pytest.raises(ValueError, match=f"^{flag}: 'cdn.example.com' is not an http"):
        StorageConfig(**{field: "cdn.example.com"})
