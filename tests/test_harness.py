"""The shared HTTP source server behaves like a real one (later download tests lean on it)."""

import urllib.request

from aiohttp import web


def test_serves_files_with_ranges_and_etag(http_server):
    url = http_server.add_file("dir/blob.bin", bytes(range(256)) * 4)
    with urllib.request.urlopen(url) as response:
        assert response.read() == bytes(range(256)) * 4
        assert response.headers["ETag"]
    partial = urllib.request.Request(url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(partial) as response:
        assert response.status == 206 and response.read() == bytes(range(10, 20))
    assert http_server.hits["/dir/blob.bin"] == 2


def test_scripted_routes_override_files(http_server):
    async def teapot(_request):
        return web.Response(status=418, text="short and stout")

    url = http_server.route("/brew", teapot)
    try:
        urllib.request.urlopen(url)
    except urllib.error.HTTPError as error:
        assert error.code == 418
    else:
        raise AssertionError("expected 418")
