"""DownloaderService: streaming, progress, cache, data URIs, names, limits, retries, single flight, Read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import urllib.parse
from pathlib import Path

import grpc
import pytest
from aiohttp import web

import ferry
from ferry.services.config import DownloaderConfig
from ferry.v1 import downloader_pb2
from tests.harness import RawHttpServer, wait_for
from tests.services.downloader.helpers import events, leftovers, status_of

CONFIG = DownloaderConfig(
    allow_private_networks=True,  # the source is a loopback server
    chunk_mib=1,
    retries=2,
    retry_backoff_seconds=0.01,
    read_timeout_seconds=1.0,
    data_uri_limit_mib=1.0,
)


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


BODY = os.urandom(3 * (1 << 20) + 17)


def completed(responses) -> downloader_pb2.DownloadCompleted:
    assert responses[-1].WhichOneof("event") == "completed"
    return responses[-1].completed


async def start_body(request, declared: int, sent: bytes, headers=None) -> web.StreamResponse:
    """A source's response that declares `declared` bytes and has sent `sent` so far; the handler says what follows."""
    response = web.StreamResponse(headers=headers)
    response.content_length = declared
    await response.prepare(request)
    await response.write(sent)
    return response


class TestStreaming:
    def test_events_are_started_progress_then_completed(self, grpc_stub, http_server, data_dir):
        url = http_server.add_file("weights.bin", BODY)
        responses = events(grpc_stub, url=url, target_dir="streaming")
        kinds = [r.WhichOneof("event") for r in responses]
        assert kinds[0] == "started" and kinds[-1] == "completed"
        assert set(kinds[1:-1]) == {"progress"}
        assert responses[0].started.total_bytes == len(BODY)
        assert responses[-2].progress.bytes_done == len(BODY), "the last progress event reports the whole body"
        done = completed(responses)
        assert Path(done.path) == data_dir / "streaming" / "weights.bin"
        assert Path(done.path).read_bytes() == BODY
        assert done.file_size == len(BODY) and not done.cache_hit
        assert done.content_type == "application/octet-stream"
        assert leftovers(data_dir) == []

    def test_unknown_length_downloads_and_says_so(self, grpc_stub, http_server):
        async def chunked(request):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(4):
                await response.write(b"x" * 1000)
            await response.write_eof()
            return response

        responses = events(grpc_stub, url=http_server.route("/chunked.txt", chunked), target_dir="chunked")
        assert not responses[0].started.HasField("total_bytes")
        assert Path(completed(responses).path).read_bytes() == b"x" * 4000

    def test_default_target_is_a_fresh_folder_per_request(self, grpc_stub, http_server, data_dir):
        url = http_server.add_file("same.bin", b"abc")
        first = Path(completed(events(grpc_stub, url=url)).path)
        second = Path(completed(events(grpc_stub, url=url)).path)
        assert first.parent != second.parent
        assert first.parent.parent == second.parent.parent == data_dir / "tmp"


class TestCache:
    def test_a_current_copy_is_a_hit_without_a_body_transfer(self, grpc_stub, http_server):
        url = http_server.add_file("cached.bin", BODY)
        completed(events(grpc_stub, url=url, target_dir="cache"))
        again = events(grpc_stub, url=url, target_dir="cache")
        assert completed(again).cache_hit
        assert len(http_server.gets("/cached.bin")) == 1, "the hit was decided with HEAD alone"

    def test_force_downloads_again(self, grpc_stub, http_server):
        url = http_server.add_file("forced.bin", BODY)
        completed(events(grpc_stub, url=url, target_dir="force"))
        assert not completed(events(grpc_stub, url=url, target_dir="force", force=True)).cache_hit
        assert len(http_server.gets("/forced.bin")) == 2

    def test_a_changed_etag_of_the_same_size_is_not_a_hit(self, grpc_stub, http_server):
        url = http_server.add_file("changing.bin", b"A" * 100)
        completed(events(grpc_stub, url=url, target_dir="etag"))
        (http_server.root / "changing.bin").write_bytes(b"B" * 100)
        os.utime(http_server.root / "changing.bin", (1, 1))  # a new mtime: aiohttp's ETag changes
        done = completed(events(grpc_stub, url=url, target_dir="etag"))
        assert not done.cache_hit and Path(done.path).read_bytes() == b"B" * 100

    def test_another_url_with_the_same_name_and_size_is_not_a_hit(self, grpc_stub, http_server):
        first = http_server.add_file("a/model.bin", b"1" * 64)
        second = http_server.add_file("b/model.bin", b"2" * 64)
        completed(events(grpc_stub, url=first, target_dir="collide"))
        done = completed(events(grpc_stub, url=second, target_dir="collide"))
        assert not done.cache_hit and Path(done.path).read_bytes() == b"2" * 64
        back = completed(events(grpc_stub, url=first, target_dir="collide"))
        assert not back.cache_hit, "the file was replaced since its record was written"
        assert Path(back.path).read_bytes() == b"1" * 64

    def test_no_content_length_means_download_again(self, grpc_stub, http_server):
        async def chunked(request):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"y" * 10)
            await response.write_eof()
            return response

        url = http_server.route("/nolength.bin", chunked)
        completed(events(grpc_stub, url=url, target_dir="nolength"))
        assert not completed(events(grpc_stub, url=url, target_dir="nolength")).cache_hit

    def test_model_weights_land_in_the_weights_store_and_return_at_once(self, grpc_stub, http_server, data_dir):
        url = http_server.add_file("model.safetensors", BODY)
        request = {"url": url, "kind": downloader_pb2.DOWNLOAD_KIND_MODEL_WEIGHTS}
        first = completed(events(grpc_stub, **request))
        expected = (
            data_dir / ".ferry" / "model_weights" / hashlib.sha256(url.encode()).hexdigest() / "model.safetensors"
        )
        assert Path(first.path) == expected and expected.read_bytes() == BODY
        requests_before = len(http_server.requests)
        again = completed(events(grpc_stub, **request))
        assert again.cache_hit and again.path == first.path
        assert len(http_server.requests) == requests_before, "present weights need no network at all"


class TestDataUris:
    def test_base64_is_decoded_locally(self, grpc_stub, data_dir):
        payload = os.urandom(5000)
        uri = "data:image/png;base64," + base64.b64encode(payload).decode()
        done = completed(events(grpc_stub, url=uri, target_dir="data-uris"))
        assert Path(done.path).read_bytes() == payload
        assert done.content_type == "image/png" and done.file_name.endswith(".png")

    def test_percent_encoding_is_decoded(self, grpc_stub):
        uri = "data:text/plain," + urllib.parse.quote("héllo, wörld\n")
        done = completed(events(grpc_stub, url=uri, target_dir="data-uris"))
        assert Path(done.path).read_text() == "héllo, wörld\n"
        assert done.file_name.endswith(".txt")

    @pytest.mark.parametrize(
        "uri",
        [
            "data:text/plain;base64,@@@@",
            "data:text/plain;base64SGVsbG8=",
            "data:text/plain;base64,SGVsb G8=",
            "data:,%zz",
        ],
        ids=["bad-base64", "missing-comma", "whitespace", "bad-escape"],
    )
    def test_malformed_data_uris_are_invalid_arguments(self, grpc_stub, data_dir, uri):
        code, _ = status_of(grpc_stub, url=uri, target_dir="bad-data-uris")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        folder = data_dir / "bad-data-uris"
        assert list(folder.iterdir()) == [] if folder.exists() else True

    def test_data_uris_over_the_cap_are_refused(self, grpc_stub, data_dir):
        uri = "data:application/octet-stream;base64," + base64.b64encode(b"\0" * ((1 << 20) + 1)).decode()
        code, _details = status_of(grpc_stub, url=uri, target_dir="huge-data-uri")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert list((data_dir / "huge-data-uri").iterdir()) == []


class TestTargetsAndNames:
    @pytest.mark.parametrize(
        "target", ["../../etc", "/etc", "in/../../..", ".ferry/records", "files/AAAAAAAAAAAAAAAAAAAAAA"]
    )
    def test_targets_outside_the_data_roots_are_refused(self, grpc_stub, http_server, target):
        url = http_server.add_file("f.txt", b"x")
        code, _ = status_of(grpc_stub, url=url, target_dir=target)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert http_server.gets("/f.txt") == [], "refused before any network traffic"

    def test_absolute_targets_inside_the_data_dir_are_allowed(self, grpc_stub, http_server, data_dir):
        url = http_server.add_file("abs.txt", b"x")
        done = completed(events(grpc_stub, url=url, target_dir=str(data_dir / "absolute")))
        assert Path(done.path) == data_dir / "absolute" / "abs.txt"

    def test_content_disposition_names_are_reduced_to_their_basename(self, grpc_stub, http_server, data_dir):
        async def evil(_request):
            return web.Response(body=b"payload", headers={"Content-Disposition": 'attachment; filename="../../x"'})

        done = completed(events(grpc_stub, url=http_server.route("/download", evil), target_dir="names"))
        assert Path(done.path) == data_dir / "names" / "x"

    def test_query_strings_do_not_leak_into_names(self, grpc_stub, http_server):
        url = http_server.add_file("model.bin", b"m") + "?token=s3cret&sig=abc"
        assert completed(events(grpc_stub, url=url, target_dir="query")).file_name == "model.bin"


class TestLimits:
    def test_declared_size_over_the_limit_is_refused_before_the_body(self, grpc_stub, http_server, data_dir):
        url = http_server.add_file("big.bin", BODY)
        code, details = status_of(grpc_stub, url=url, target_dir="limits", filesize_limit_bytes=1000)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1000" in details
        assert not (data_dir / "limits" / "big.bin").exists() and leftovers(data_dir) == []

    def test_a_body_growing_past_the_limit_is_cut_off(self, grpc_stub, http_server, data_dir):
        async def endless(request):
            response = web.StreamResponse()  # no Content-Length: it only reveals its size by sending
            await response.prepare(request)
            for _ in range(100):
                await response.write(b"z" * 65536)
            return response

        url = http_server.route("/endless.bin", endless)
        code, _ = status_of(grpc_stub, url=url, target_dir="limits2", filesize_limit_bytes=200_000)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert list((data_dir / "limits2").iterdir()) == []


class TestHeadersAndRedirects:
    def test_request_headers_reach_the_source(self, grpc_stub, http_server):
        url = http_server.add_file("private.bin", b"p")
        completed(events(grpc_stub, url=url, target_dir="auth", request_headers={"Authorization": "Bearer abc"}))
        assert http_server.gets("/private.bin")[0]["Authorization"] == "Bearer abc"

    def test_credentials_are_dropped_when_a_redirect_changes_origin(self, grpc_stub, http_server):
        http_server.add_file("landing.bin", b"l")
        other_origin = http_server.url("/landing.bin").replace("127.0.0.1", "localhost")

        async def redirect(_request):
            raise web.HTTPFound(other_origin)

        url = http_server.route("/moved", redirect)
        headers = {"Authorization": "Bearer abc", "Cookie": "s=1", "X-Trace": "t"}
        completed(events(grpc_stub, url=url, target_dir="redirect", request_headers=headers))
        (landed,) = http_server.gets("/landing.bin")
        assert "Authorization" not in landed and "Cookie" not in landed
        assert landed["X-Trace"] == "t"

    def test_credentials_survive_a_same_origin_redirect(self, grpc_stub, http_server):
        http_server.add_file("same.bin", b"s")

        async def redirect(_request):
            raise web.HTTPFound("/same.bin")

        url = http_server.route("/same-origin", redirect)
        completed(events(grpc_stub, url=url, target_dir="redirect2", request_headers={"Authorization": "Bearer abc"}))
        assert http_server.gets("/same.bin")[0]["Authorization"] == "Bearer abc"

    def test_more_than_five_redirects_fail(self, grpc_stub, http_server):
        async def loop(request):
            raise web.HTTPFound(f"/hop{int(request.path[4:]) + 1}")

        for hop in range(8):
            http_server.route(f"/hop{hop}", loop)
        code, details = status_of(grpc_stub, url=http_server.url("/hop0"), target_dir="loop")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "redirects" in details


class TestFaults:
    @pytest.mark.parametrize(
        ("status", "code"),
        [
            (404, grpc.StatusCode.NOT_FOUND),
            (403, grpc.StatusCode.PERMISSION_DENIED),
            (500, grpc.StatusCode.UNAVAILABLE),
        ],
    )
    def test_source_statuses_map_to_grpc_codes(self, grpc_stub, http_server, data_dir, status, code):
        async def answer(_request):
            return web.Response(status=status, text="no")

        got, _ = status_of(grpc_stub, url=http_server.route(f"/status{status}", answer), target_dir="statuses")
        assert got == code and leftovers(data_dir) == []

    def test_transient_failures_are_retried(self, grpc_stub, http_server):
        answers = iter([web.Response(status=503), web.Response(status=429, headers={"Retry-After": "0"})])

        async def flaky(_request):
            return next(answers, None) or web.Response(body=b"finally")

        done = completed(events(grpc_stub, url=http_server.route("/flaky.bin", flaky), target_dir="retry"))
        assert Path(done.path).read_bytes() == b"finally"
        assert len(http_server.gets("/flaky.bin")) == 3

    def test_a_body_cut_short_resumes_with_range(self, grpc_stub, http_server):
        http_server.add_file("resumable.bin", BODY)
        cut = {"done": False}

        async def cut_once(request):
            if cut["done"] or "Range" in request.headers:
                return web.FileResponse(http_server.root / "resumable.bin")
            cut["done"] = True
            resumable = {"Accept-Ranges": "bytes", "ETag": '"v1"'}
            response = await start_body(request, declared=len(BODY), sent=BODY[: len(BODY) // 2], headers=resumable)
            request.transport.close()  # the connection drops mid-body
            return response

        url = http_server.route("/resume.bin", cut_once)
        done = completed(events(grpc_stub, url=url, target_dir="resume"))
        assert Path(done.path).read_bytes() == BODY
        ranged = [h for h in http_server.gets("/resume.bin") if "Range" in h]
        assert ranged and ranged[0]["Range"] == f"bytes={len(BODY) // 2}-"

    def test_a_body_cut_short_restarts_when_the_source_cannot_resume(self, grpc_stub, http_server):
        attempts = []

        async def cut_once_no_ranges(request):
            attempts.append(dict(request.headers))
            # No Accept-Ranges, no validator: resuming is not safe.
            if len(attempts) > 1:
                return await start_body(request, declared=len(BODY), sent=BODY)
            response = await start_body(request, declared=len(BODY), sent=BODY[:1000])
            request.transport.close()
            return response

        done = completed(
            events(grpc_stub, url=http_server.route("/restart.bin", cut_once_no_ranges), target_dir="restart")
        )
        assert Path(done.path).read_bytes() == BODY, "the partial first attempt was discarded, not appended to"
        assert len(attempts) == 2 and "Range" not in attempts[1]

    def test_a_body_always_shorter_than_declared_is_an_error(self, grpc_stub, http_server, data_dir):
        async def liar(request):
            response = await start_body(request, declared=1000, sent=b"a" * 500)
            request.transport.close()
            return response

        code, details = status_of(grpc_stub, url=http_server.route("/short.bin", liar), target_dir="short")
        assert code == grpc.StatusCode.UNAVAILABLE and "500" in details
        assert list((data_dir / "short").iterdir()) == [] and leftovers(data_dir) == []

    def test_a_body_longer_than_declared_is_a_malformed_response(self, grpc_stub, background_loop, data_dir):
        server = RawHttpServer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789EXTRA-BYTES-THE-SERVER-LIED-ABOUT"
        )
        background_loop.run(server.start())
        try:
            code, details = status_of(grpc_stub, url=f"{server.url}/long.bin", target_dir="long")
        finally:
            background_loop.run(server.stop())
        assert code == grpc.StatusCode.UNAVAILABLE and "EXTRA" in details
        assert list((data_dir / "long").iterdir()) == [], "neither the declared bytes nor the extra ones are kept"

    def test_a_stalled_source_fails_unavailable_after_retries(self, grpc_stub, http_server, data_dir):
        async def stall(request):
            response = await start_body(request, declared=100, sent=b"s" * 10)
            await asyncio.sleep(30)
            return response

        code, _details = status_of(grpc_stub, url=http_server.route("/stall.bin", stall), target_dir="stall")
        assert code == grpc.StatusCode.UNAVAILABLE
        assert len(http_server.gets("/stall.bin")) == CONFIG.retries + 1
        assert leftovers(data_dir) == []

    def test_the_server_keeps_serving_after_faults(self, grpc_stub, http_server):
        url = http_server.add_file("after.bin", b"still here")
        assert Path(completed(events(grpc_stub, url=url, target_dir="after")).path).read_bytes() == b"still here"


class TestCancellation:
    def test_a_cancelled_call_stops_the_transfer_and_leaves_no_temp_file(self, grpc_stub, http_server, data_dir):
        source_gone = threading.Event()

        async def trickle(request):
            response = web.StreamResponse()
            response.content_length = 100 * 65536
            await response.prepare(request)
            try:
                for _ in range(100):
                    await response.write(b"t" * 65536)
                    await asyncio.sleep(0.05)
            except (ConnectionError, asyncio.CancelledError):
                source_gone.set()
                raise
            return response

        call = grpc_stub.Download(
            downloader_pb2.DownloadRequest(url=http_server.route("/trickle.bin", trickle), target_dir="cancel")
        )
        for response in call:
            if response.WhichOneof("event") == "progress":
                break
        assert leftovers(data_dir / "cancel"), "the transfer was under way"
        call.cancel()
        assert source_gone.wait(10), "the server stopped reading from the source"
        wait_for(lambda: not leftovers(data_dir / "cancel"), "the temp file to be removed")
        assert list((data_dir / "cancel").iterdir()) == []


class TestSingleFlight:
    @pytest.mark.timeout(120)
    async def test_a_thousand_concurrent_requests_fetch_once(self, grpc_addr, grpc_server, http_server):
        async def slow_start(_request):
            await asyncio.sleep(0.5)  # everyone arrives while the first transfer is open
            return web.Response(body=BODY)

        url = http_server.route("/popular.bin", slow_start)
        async with ferry.AsyncClient(grpc_addr) as client:
            paths = await asyncio.gather(*(client.download_file(url, target_dir="popular") for _ in range(1000)))
        assert len(set(paths)) == 1 and paths[0].read_bytes() == BODY
        assert len(http_server.gets("/popular.bin")) == 1


class TestRead:
    def test_read_streams_a_file_in_bounded_chunks(self, grpc_stub, http_server):
        url = http_server.add_file("readable.bin", BODY)
        path = completed(events(grpc_stub, url=url, target_dir="read")).path
        responses = list(grpc_stub.Read(downloader_pb2.ReadRequest(path=path)))
        assert responses[0].header.file_size == len(BODY) and responses[0].header.file_name == "readable.bin"
        chunks = [r.chunk for r in responses[1:]]
        assert all(len(c) <= 1 << 20 for c in chunks) and b"".join(chunks) == BODY

    def test_read_honours_offset_and_length(self, grpc_stub, http_server):
        url = http_server.add_file("ranged.bin", BODY)
        path = completed(events(grpc_stub, url=url, target_dir="read")).path
        responses = list(grpc_stub.Read(downloader_pb2.ReadRequest(path=path, offset=100, length=2_000_000)))
        assert b"".join(r.chunk for r in responses[1:]) == BODY[100:2_000_100]

    @pytest.mark.parametrize(
        ("path", "code"),
        [
            ("/etc/passwd", grpc.StatusCode.PERMISSION_DENIED),
            ("../../etc/passwd", grpc.StatusCode.PERMISSION_DENIED),
            (".ferry/records", grpc.StatusCode.PERMISSION_DENIED),
            ("nowhere/missing.bin", grpc.StatusCode.NOT_FOUND),
        ],
    )
    def test_read_refuses_paths_outside_the_roots_and_missing_files(self, grpc_stub, path, code):
        with pytest.raises(grpc.RpcError) as caught:
            list(grpc_stub.Read(downloader_pb2.ReadRequest(path=path)))
        assert caught.value.code() == code


class TestSdk:
    def test_download_file_returns_the_path_and_reports_progress(self, client, http_server):
        url = http_server.add_file("sdk.bin", BODY)
        seen = []
        path = client.download_file(url, target_dir="sdk", on_progress=seen.append)
        assert path.read_bytes() == BODY
        assert seen and seen[-1].bytes_done == len(BODY) and seen[-1].total_bytes == len(BODY)
        assert seen[-1].file_name == "sdk.bin"

    def test_a_client_without_the_data_dir_fetches_through_read(
        self, grpc_addr, grpc_server, http_server, tmp_path, data_dir
    ):
        url = http_server.add_file("remote.bin", BODY)
        with ferry.Client(grpc_addr, shared_data_dir=False) as remote:
            path = remote.download_file(url, target_dir=tmp_path / "local")
        assert path == tmp_path / "local" / "remote.bin" and path.read_bytes() == BODY
        assert not path.is_relative_to(data_dir)

    def test_filesize_limit_is_in_megabytes(self, client, http_server):
        url = http_server.add_file("mb.bin", BODY)  # a little over 3 MiB
        with pytest.raises(ferry.FerryError) as caught:
            client.download_file(url, target_dir="mb", filesize_limit=3)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.download_file(url, target_dir="mb", filesize_limit=4).read_bytes() == BODY

    def test_errors_carry_code_and_reason(self, client):
        with pytest.raises(ferry.FerryError) as caught:
            client.download_file("gopher://example.com/x")
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason == "SCHEME_REFUSED"

    async def test_async_twin(self, grpc_addr, grpc_server, http_server):
        url = http_server.add_file("async.bin", BODY)
        async with ferry.AsyncClient(grpc_addr) as client:
            path = await client.download_file(url, target_dir="async")
            weights = await client.download_model_weights(url)
        assert path.read_bytes() == BODY and weights.read_bytes() == BODY
