"""A URL is under a base only with the base's scheme, host and port, and the base's whole path segments first."""

from __future__ import annotations

import pytest

from ferry.services.downloader.url_prefix import UrlPrefix

BASE = UrlPrefix.parse("https://cdn.example.com/media/")


@pytest.mark.parametrize(
    ("url", "rest"),
    [
        ("https://cdn.example.com/media/files/abc/cat.png", ("files", "abc", "cat.png")),
        ("https://CDN.example.com:443/media/files/abc/cat.png", ("files", "abc", "cat.png")),
        ("https://cdn.example.com/media/files/abc/cat%20photo.png?x=1#y", ("files", "abc", "cat photo.png")),
        ("https://cdn.example.com/media/x/../files/abc/cat.png", ("files", "abc", "cat.png")),
        ("https://cdn.example.com/media", ()),
    ],
)
def test_urls_under_the_base_give_the_decoded_segments_after_it(url, rest):
    assert BASE.rest(url) == rest


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.com/media/files/abc/cat.png",  # scheme
        "https://cdn.example.org/media/files/abc/cat.png",  # host
        "https://cdn.example.com:8443/media/files/abc/cat.png",  # port
        "https://cdn.example.com/other/files/abc/cat.png",  # path
        "https://cdn.example.com/mediafiles/abc/cat.png",  # a string prefix is not a segment prefix
        "https://cdn.example.com/media/../etc/passwd",  # dot segments are resolved first
        "https://cdn.example.com/media/%2e%2e/etc/passwd",
        "https://cdn.example.com/media/files%2F..%2F..%2Fetc/passwd",  # an encoded separator
        "https://user:pass@cdn.example.com/media/files/abc/cat.png",  # credentials
        "https://cdn.example.com:99999/media/x",  # not a URL at all
        "not a url",
    ],
)
def test_urls_not_under_the_base_have_no_rest(url):
    assert BASE.rest(url) is None and not BASE.covers(url)


def test_a_base_without_a_path_covers_its_whole_origin():
    origin = UrlPrefix.parse("http://127.0.0.1:8787")
    assert origin.rest("http://127.0.0.1:8787/files/abc/cat.png") == ("files", "abc", "cat.png")
    assert origin.rest("http://127.0.0.1:8788/files/abc/cat.png") is None
    assert origin.rest("http://localhost:8787/files/abc/cat.png") is None, "names are compared, not resolved"


@pytest.mark.parametrize("base", ["", "ftp://example.com/", "https:///nohost", "https://user@example.com/"])
def test_only_plain_http_urls_can_be_bases(base):
    with pytest.raises(ValueError, match="is not an http"):
        UrlPrefix.parse(base)
