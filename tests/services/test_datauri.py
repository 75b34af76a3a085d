"""Data URIs decode locally, block by block, into a file and within a byte limit."""

import base64
import io
import os
import re
import tracemalloc
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.services.downloader.datauri import (
    DataUri,
    decoded_size_bound,
    extension_for,
    parse_data_uri,
    write_decoded,
)
from ferry.sizes import MIB

block_sizes = st.integers(1, 16).map(lambda quads: 4 * quads)


def decode(uri: str, *, limit: int = MIB, block_chars: int = MIB) -> bytes:
    out = io.BytesIO()
    written = write_decoded(uri, parse_data_uri(uri), out, limit=limit, block_chars=block_chars)
    assert written == len(out.getvalue())
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_decodes_to(uri: str, data: bytes, block_chars: int) -> None:
    """`uri` decodes to `data` in blocks of `block_chars`, and its size bound is exact."""
    assert decode(uri, block_chars=block_chars) == data
    assert decoded_size_bound(uri, parse_data_uri(uri)) == len(data)


# -- the header --------------------------------------------------------------------------


def test_header_gives_media_type_encoding_and_where_the_payload_starts():
    assert parse_data_uri("data:image/png;base64,iVBORw0KGgo=") == DataUri("image/png", True, 22)
    assert parse_data_uri("data:application/json,{}") == DataUri("application/json", False, 22)


def test_prefix_media_type_and_base64_marker_are_case_insensitive():
    assert parse_data_uri("DATA:Image/PNG;BASE64,AAAA") == DataUri("image/png", True, 22)


def test_omitted_media_type_is_text_plain_and_parameters_are_dropped():
    assert parse_data_uri("data:,hi").media_type == "text/plain"
    assert parse_data_uri("data:;base64,aGk=").media_type == "text/plain"
    assert parse_data_uri("data:;charset=utf-8,hi").media_type == "text/plain"
    assert parse_data_uri("data:text/csv;charset=utf-8;header=present,a").media_type == "text/csv"


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/a.png",
        "image/png;base64,AAAA",
        "dat:image/png,AAAA",
        "data:image/png;base64",  # no comma
        "data:image;base64,AAAA",  # no subtype
        "data:image/png;charset,AAAA",  # a parameter without a value
        "data:ima ge/png,AAAA",
        "data:image/png;base64;charset=utf-8,AAAA",  # base64 must come last
    ],
)
def test_malformed_header_is_invalid_argument(uri):
    with pytest.raises(InvalidArgument) as raised:
        parse_data_uri(uri)
    assert raised.value.reason == "MALFORMED_DATA_URI"


# -- both encodings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "as_uri",
    [
        lambda data: "data:application/octet-stream;base64," + b64(data),
        lambda data: "data:application/octet-stream," + quote_from_bytes(data),
    ],
    ids=["base64", "percent-encoded"],
)
@given(st.binary(max_size=300), block_sizes)
def test_a_payload_round_trips_across_block_boundaries(as_uri, data, block_chars):
    assert_decodes_to(as_uri(data), data, block_chars)


# -- base64 --------------------------------------------------------------------------------


@given(st.binary(max_size=300), block_sizes)
def test_base64_may_omit_its_final_padding(data, block_chars):
    assert_decodes_to("data:;base64," + b64(data).rstrip("="), data, block_chars)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("aGVsbG8*", "'*'"),
        ("aGVs bG8=", "' '"),  # whitespace is not skipped
        ("aGVs\nbG8=", re.escape(r"'\n'")),
        ("aGVs-_8=", "'-'"),  # the URL-safe alphabet is not base64
        ("aGVsbG8\u00e9", "'\u00e9'"),
        ("aQ==aGVsbG8=", "padding"),
        ("aGVsbA==aGVs", "padding"),
        ("aGVs=", "padding"),  # padding after a whole quad
        ("aQ=Q", "padding"),
        ("aGVsb", "one more"),  # a lone sixth of a byte
    ],
)
@pytest.mark.parametrize("block_chars", [4, 8, MIB])
def test_bad_base64_is_invalid_argument_naming_the_problem(payload, problem, block_chars):
    with pytest.raises(InvalidArgument, match=problem) as raised:
        decode("data:;base64," + payload, block_chars=block_chars)
    assert raised.value.reason == "MALFORMED_DATA_URI"


# -- percent-encoding ----------------------------------------------------------------------


@given(st.text(max_size=100), block_sizes)
def test_unescaped_non_ascii_text_is_written_as_utf8(text, block_chars):
    assert_decodes_to("data:text/plain;charset=utf-8," + text.replace("%", "%25"), text.encode(), block_chars)


def test_a_lone_surrogate_has_no_bytes_and_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="surrogate"):
        decode("data:,a\ud800b")


@pytest.mark.parametrize("payload", ["%zz", "abc%4", "abc%", "%%41", "ab%4g", "a%G1b"])
@pytest.mark.parametrize("block_chars", [4, 8, MIB])
def test_percent_without_two_hex_digits_is_invalid_argument(payload, block_chars):
    with pytest.raises(InvalidArgument, match="two hex digits") as raised:
        decode("data:," + payload, block_chars=block_chars)
    assert raised.value.reason == "MALFORMED_DATA_URI"


def test_block_size_must_hold_whole_base64_quads():
    with pytest.raises(ValueError, match="multiple of 4"):
        decode("data:,abc", block_chars=6)


# -- the limit -----------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [lambda data: ";base64," + b64(data), lambda data: "," + quote_from_bytes(data)])
def test_exactly_the_limit_passes_and_one_byte_more_is_resource_exhausted(encode):
    uri = "data:" + encode(os.urandom(1000))
    assert len(decode(uri, limit=1000, block_chars=64)) == 1000
    with pytest.raises(ResourceExhausted) as raised:
        decode(uri, limit=999, block_chars=64)
    assert raised.value.reason == "DATA_URI_TOO_LARGE"


def test_a_huge_uri_is_refused_before_anything_is_decoded():
    uri = "data:;base64," + "A" * (64 * MIB)
    out = io.BytesIO()
    with pytest.raises(ResourceExhausted, match="50331648 bytes"):
        write_decoded(uri, parse_data_uri(uri), out, limit=MIB)
    assert out.getvalue() == b""


def test_the_limit_holds_even_when_a_malformed_payload_fools_the_size_estimate():
    # "%" counts as an escape in the estimate (3 bytes), yet "AAAA" decodes first.
    uri = "data:,AAAA%"
    with pytest.raises(ResourceExhausted):
        decode(uri, limit=3, block_chars=4)


# -- memory --------------------------------------------------------------------------------


def test_decoding_8_mib_holds_about_one_block_in_memory(tmp_path):
    data = os.urandom(8 * MIB)
    uri = "data:application/octet-stream;base64," + b64(data)
    parsed = parse_data_uri(uri)
    with open(tmp_path / "out.bin", "wb") as out:
        tracemalloc.start()
        try:
            written = write_decoded(uri, parsed, out, limit=16 * MIB, block_chars=MIB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert written == 8 * MIB
    assert peak < 3 * MIB
    assert (tmp_path / "out.bin").read_bytes() == data


# -- extensions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "extension"),
    [
        ("image/png", ".png"),
        ("image/jpeg", ".jpg"),
        ("image/webp", ".webp"),
        ("image/gif", ".gif"),
        ("video/mp4", ".mp4"),
        ("audio/wav", ".wav"),
        ("audio/x-wav", ".wav"),
        ("text/plain", ".txt"),
        ("application/json", ".json"),
        ("IMAGE/PNG", ".png"),
        ("text/plain; charset=utf-8", ".txt"),
        ("application/pdf", ".pdf"),  # not in the table: mimetypes knows it
        ("application/x-ferry-unknown", ".bin"),
    ],
)
def test_extension_for_media_type(media_type, extension):
    assert extension_for(media_type) == extension
