"""With the default network guard, hostile URLs get PERMISSION_DENIED naming why, and nothing is fetched."""

from __future__ import annotations

import grpc
import pytest
from aiohttp import web

from ferry.services.config import DownloaderConfig
from tests.services.downloader.helpers import events, leftovers, status_of

# Only the host name "localhost" is allow-listed: the test source is reachable
# by that name, while every address spelling of loopback stays refused.
CONFIG = DownloaderConfig(allow_hosts="localhost", retries=0)


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://0.0.0.0/", "unspecified"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("ftp://example.com/file", "scheme 'ftp'"),
    ],
)
def test_hostile_urls_are_refused_naming_the_reason(grpc_stub, data_dir, url, reason):
    code, details = status_of(grpc_stub, url=url, target_dir="hostile")
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert reason in details
    assert leftovers(data_dir) == []


def test_an_allowed_host_redirecting_to_loopback_is_refused(grpc_stub, http_server):
    http_server.add_file("secret.txt", b"internal")

    async def to_loopback(_request):
        raise web.HTTPFound(http_server.url("/secret.txt"))  # 127.0.0.1: not allow-listed

    url = http_server.route("/innocent", to_loopback).replace("127.0.0.1", "localhost")
    code, details = status_of(grpc_stub, url=url, target_dir="redirected")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "127.0.0.1" in details
    assert http_server.hits.get("/innocent") == 1, "the allowed first hop was fetched"
    assert http_server.gets("/secret.txt") == [], "the redirect target never was"


def test_malformed_urls_are_invalid_arguments(grpc_stub):
    for url in ("not a url", "http://", "http://[::1"):
        code, _ = status_of(grpc_stub, url=url)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, url


def test_the_server_keeps_serving_after_refusals(grpc_stub, http_server):
    url = http_server.add_file("fine.txt", b"ok").replace("127.0.0.1", "localhost")
    assert events(grpc_stub, url=url, target_dir="fine")[-1].completed.file_size == 2
