"""A download's request headers are checked before anything connects: a bad one is INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

import grpc
import pytest

import ferry
from ferry.services.config import DownloaderConfig
from tests.services.downloader.helpers import events, leftovers

CONFIG = DownloaderConfig(allow_private_networks=True, retries=0)  # the source is a loopback server


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


def refusal(stub, **fields) -> ferry.FerryError:
    with pytest.raises(grpc.RpcError) as caught:
        events(stub, **fields)
    return ferry.FerryError.from_rpc_error(caught.value)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\r\nX-Injected: yes"},
        {"X-Note": "line\nbreak"},
        {"X-Note": "carriage\rreturn"},
        {"X-Note": "nul\x00byte"},
        {"X-Note": "bell\x07"},
        {"X-Evil\r\nX-Injected": "yes"},
        {"X-Nul\x00": "v"},
        {"Bad Name": "v"},
        {"Colon:Name": "v"},
        {"": "v"},
        {"Ünicode": "v"},
        {"X-" + "n" * 300: "v"},
        {"X-Big": "v" * 9000},
        {f"X-{index}": "v" for index in range(65)},
        {"Host": "internal.example"},
        {"Content-Length": "5"},
        {"Transfer-Encoding": "chunked"},
        {"Range": "bytes=0-1"},
    ],
    ids=[
        "crlf-in-value",
        "lf-in-value",
        "cr-in-value",
        "nul-in-value",
        "control-in-value",
        "crlf-in-name",
        "nul-in-name",
        "space-in-name",
        "colon-in-name",
        "empty-name",
        "non-token-name",
        "long-name",
        "long-value",
        "too-many",
        "host",
        "content-length",
        "transfer-encoding",
        "range",
    ],
)
def test_a_bad_request_header_is_refused_before_any_connection(grpc_stub, http_server, data_dir, headers):
    url = http_server.add_file("plain.txt", b"plain")
    error = refusal(grpc_stub, url=url, target_dir="headers", request_headers=headers)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_HEADER")
    assert http_server.requests == [], "no request reached the source"
    assert not (data_dir / "headers" / "plain.txt").exists() and leftovers(data_dir) == []


def test_data_uris_are_held_to_the_same_header_rules(grpc_stub):
    error = refusal(grpc_stub, url="data:text/plain,hi", request_headers={"X-Note": "a\r\nb"})
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_HEADER")


def test_the_refusal_names_a_short_prefix_of_a_huge_header_name(grpc_stub, http_server):
    error = refusal(grpc_stub, url=http_server.url("x"), request_headers={"X" * (1 << 20): "v"})
    assert error.reason == "INVALID_HEADER" and len(str(error)) < 300


def test_ordinary_headers_with_tabs_spaces_and_non_ascii_text_still_reach_the_source(grpc_stub, http_server):
    url = http_server.add_file("fine.txt", b"fine")
    headers = {"Authorization": "Bearer abc", "X-Trace": "a\tb c", "X-Name": "café", "x-lower_case.ok~": "1"}
    assert events(grpc_stub, url=url, target_dir="fine", request_headers=headers)[-1].completed.file_size == 4
    (sent,) = http_server.gets("/fine.txt")
    assert sent["Authorization"] == "Bearer abc" and sent["X-Trace"] == "a\tb c"


def test_the_server_keeps_serving_after_refusing_headers(grpc_stub, http_server):
    refusal(grpc_stub, url=http_server.url("x"), request_headers={"X": "\r\n"})
    url = http_server.add_file("after.txt", b"after")
    assert events(grpc_stub, url=url, target_dir="after")[-1].completed.file_size == 5
