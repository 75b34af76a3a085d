"""The embedded CDN over real HTTP: a stored file under its exact URL, with HTTP's caching and ranges; 404 otherwise.

Paths are sent byte for byte over a socket, so no client library normalises
a `..` or a `%2e%2e%2f` away before the server sees it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.services.storage.base import NewObject, StoredObject
from ferry.services.storage.cdn import create_cdn_app
from ferry.services.storage.local import LocalStorage
from tests.harness import serve_on_loopback
from tests.services.storage_fixtures import TurnedClock

TOKEN = "cdn-secret"
DATA = bytes(range(256)) * 4  # 1 KiB


@dataclass
class Cdn:
    storage: LocalStorage
    host: str
    port: int

    async def request(self, method: str, raw_path: str, headers: dict[str, str] | None = None) -> Reply:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {raw_path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in header_lines)
        return Reply(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body)

    async def put(
        self,
        tmp_path: Path,
        *,
        file_name: str = "clip.bin",
        content_type: str = "video/mp4",
        expires_in: int | None = None,
    ) -> StoredObject:
        source = tmp_path / "incoming"
        source.write_bytes(DATA)
        return await self.storage.put_file(
            source,
            NewObject(file_name=file_name, content_type=content_type, expires_in=expires_in),
            hashlib.sha256(DATA).hexdigest(),
        )


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def clock() -> TurnedClock:
    return TurnedClock()


@pytest.fixture
async def cdn(tmp_path: Path, clock: TurnedClock) -> AsyncIterator[Cdn]:
    base_url = ""
    storage = LocalStorage(tmp_path / "data" / "files", lambda: base_url, clock=clock)
    runner, base_url = await serve_on_loopback(create_cdn_app(TOKEN, storage))
    yield Cdn(storage, "127.0.0.1", runner.addresses[0][1])
    await runner.cleanup()


async def test_a_file_is_served_with_its_stored_type_length_and_etag(cdn: Cdn, tmp_path: Path) -> None:
    stored = await cdn.put(tmp_path, file_name="clip.bin", content_type="video/mp4")

    reply = await cdn.request("GET", f"/files/{stored.key}/clip.bin")

    assert reply.status == 200 and reply.body == DATA
    assert reply.headers["content-type"] == "video/mp4"  # the stored type, not a guess from ".bin"
    assert reply.headers["content-length"] == str(len(DATA))
    assert reply.headers["etag"]
    assert reply.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("file_name", "content_type"),
    [
        ("page.html", "text/html"),
        ("logo.svg", "image/svg+xml"),
        ("feed.xml", "application/xml"),
        ("app.js", "text/javascript"),
        ("doc.xhtml", "application/xhtml+xml; charset=utf-8"),
        ("look-alike.txt", "text/plain-html"),  # a prefix of a passive type is not one
        ("look-alike.json", "application/jsonp"),
    ],
)
async def test_a_file_that_could_run_script_is_a_sandboxed_download_never_a_page(
    cdn: Cdn, tmp_path: Path, file_name: str, content_type: str
) -> None:
    stored = await cdn.put(tmp_path, file_name=file_name, content_type=content_type)
    reply = await cdn.request("GET", f"/files/{stored.key}/{file_name}")

    assert reply.headers["content-disposition"] == f"attachment; filename*=UTF-8''{file_name}"
    assert reply.headers["content-security-policy"] == "sandbox"
    assert reply.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("content_type", ["image/png", "video/mp4", "audio/wav", "text/plain", "application/json"])
async def test_media_and_plain_text_are_shown_in_place_yet_sandboxed(
    cdn: Cdn, tmp_path: Path, content_type: str
) -> None:
    stored = await cdn.put(tmp_path, content_type=content_type)
    reply = await cdn.request("GET", f"/files/{stored.key}/clip.bin")

    assert "content-disposition" not in reply.headers
    assert reply.headers["content-security-policy"] == "sandbox"


async def test_head_answers_the_headers_without_the_body(cdn: Cdn, tmp_path: Path) -> None:
    stored = await cdn.put(tmp_path)

    reply = await cdn.request("HEAD", f"/files/{stored.key}/clip.bin")

    assert (reply.status, reply.headers["content-length"], reply.body) == (200, str(len(DATA)), b"")


async def test_a_range_is_answered_with_206_and_just_those_bytes(cdn: Cdn, tmp_path: Path) -> None:
    stored = await cdn.put(tmp_path)

    reply = await cdn.request("GET", f"/files/{stored.key}/clip.bin", {"Range": "bytes=100-199"})

    assert reply.status == 206
    assert reply.body == DATA[100:200]
    assert reply.headers["content-range"] == f"bytes 100-199/{len(DATA)}"


async def test_a_matching_etag_revalidates_without_the_body(cdn: Cdn, tmp_path: Path) -> None:
    stored = await cdn.put(tmp_path)
    etag = (await cdn.request("GET", f"/files/{stored.key}/clip.bin")).headers["etag"]

    reply = await cdn.request("GET", f"/files/{stored.key}/clip.bin", {"If-None-Match": etag})

    assert (reply.status, reply.body) == (304, b"")


async def test_a_file_without_expiry_is_cacheable_for_good(cdn: Cdn, tmp_path: Path) -> None:
    stored = await cdn.put(tmp_path)

    reply = await cdn.request("GET", f"/files/{stored.key}/clip.bin")

    assert reply.headers["cache-control"] == "public, max-age=31536000, immutable"


async def test_an_expiring_file_is_cached_privately_no_longer_than_it_lives(cdn: Cdn, tmp_path: Path) -> None:
    stored = await cdn.put(tmp_path, expires_in=600)

    reply = await cdn.request("GET", f"/files/{stored.key}/clip.bin")

    directive, max_age = reply.headers["cache-control"].split(", ")
    assert directive == "private" and 590 <= int(max_age.removeprefix("max-age=")) <= 600


async def test_an_expired_file_is_not_found_before_and_after_the_sweep(
    cdn: Cdn, tmp_path: Path, clock: TurnedClock
) -> None:
    stored = await cdn.put(tmp_path, expires_in=1)
    clock.turn(1)

    assert (await cdn.request("GET", f"/files/{stored.key}/clip.bin")).status == 404
    await cdn.storage.sweep(stored.expires_at)  # type: ignore[arg-type]
    assert (await cdn.request("GET", f"/files/{stored.key}/clip.bin")).status == 404


@pytest.mark.parametrize(
    "path",
    [
        "/files/",
        "/files",
        "/files/{id}",
        "/files/{id}/",
        "/files/{id}/other.bin",  # the right id with the wrong name
        "/files/{id}/clip.bin/",
        "/files/{id}/.",
        "/files/{id}/..",
        "/files/{id}x/clip.bin",
        "/files/{short}/clip.bin",
        "/files/AAAAAAAAAAAAAAAAAAAAAA/clip.bin",  # well formed, never issued
        "/files/{id}/../{id}/clip.bin",
        "/files/../.ferry/storage/objects/{id}.json",
        "/files/{id}/..%2f..%2f.ferry%2fstorage%2fobjects%2f{id}.json",
        "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd/clip.bin",
        "/files/{id}/%2e%2e%2fclip.bin",
        "/files/{id}%2fclip.bin",
        "/files/%2e%2e/{id}/clip.bin",
    ],
)
async def test_anything_but_a_live_objects_exact_path_is_not_found(cdn: Cdn, tmp_path: Path, path: str) -> None:
    stored = await cdn.put(tmp_path)
    reply = await cdn.request("GET", path.format(id=stored.key, short=stored.key[:-1]))
    assert reply.status == 404
    assert DATA not in reply.body


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
async def test_writes_need_the_token(cdn: Cdn, tmp_path: Path, method: str) -> None:
    stored = await cdn.put(tmp_path)
    path = f"/files/{stored.key}/clip.bin"

    assert (await cdn.request(method, path, {"Content-Length": "0"})).status == 401
    with_token = await cdn.request(method, path, {"Content-Length": "0", "Authorization": f"Bearer {TOKEN}"})
    assert with_token.status == 405  # past the token, and there is nothing to write
    assert (await cdn.request("GET", path)).body == DATA


async def test_without_local_storage_there_are_no_files_to_serve() -> None:
    runner, _ = await serve_on_loopback(create_cdn_app(None))
    try:
        cdn = Cdn(None, "127.0.0.1", runner.addresses[0][1])  # type: ignore[arg-type]
        assert (await cdn.request("GET", "/files/AAAAAAAAAAAAAAAAAAAAAA/clip.bin")).status == 404
        assert (await cdn.request("GET", "/healthz")).body == b"ok\n"
    finally:
        await runner.cleanup()
