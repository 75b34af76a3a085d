"""Out of the box (no allow-list, no private networks), a name resolving to loopback is refused at connect time."""

from __future__ import annotations

import grpc
import pytest

from ferry.services.config import DownloaderConfig
from tests.services.downloader.helpers import status_of


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return DownloaderConfig()


def test_localhost_is_checked_on_its_resolved_address(grpc_stub, http_server):
    url = http_server.add_file("secret.txt", b"internal").replace("127.0.0.1", "localhost")
    code, details = status_of(grpc_stub, url=url)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "127.0.0.1 (loopback)" in details and "localhost" in details
    assert http_server.requests == [], "no byte reached the internal server"


def test_the_refusal_of_a_private_source_names_the_flags_that_would_allow_it(grpc_stub, http_server):
    code, details = status_of(grpc_stub, url=http_server.add_file("mine.txt", b"mine"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "--allow-hosts" in details and "--allow-private-networks" in details
