"""Large files from sources that serve byte ranges download over several connections at once (ranged.py).

The source here is `RangedBody`, a real aiohttp route that serves one body as a file server does (Accept-Ranges,
ETag, If-Range, 206 with Content-Range), paced per chunk like a host that caps each connection's rate, with
knobs for the ways a source can misbehave. The threshold is 1 MiB and the file a little over 4 MiB, in 4 ranges.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from pathlib import Path

import grpc
import pytest
from aiohttp import web

import ferry
from ferry.services.config import DownloaderConfig
from ferry.services.downloader.engine import Downloader
from ferry.services.downloader.fetch import RemoteFile
from ferry.services.downloader.ranged import ByteRange, plan_ranges
from ferry.sizes import MIB
from ferry.v1 import downloader_pb2
from tests.harness import wait_for
from tests.services.downloader.helpers import events, leftovers, status_of

CONNECTIONS = 4
CONFIG = DownloaderConfig(
    allow_hosts="127.0.0.1/32",  # the loopback source; the guard still refuses every other private address
    chunk_mib=1,
    retries=2,
    retry_backoff_seconds=0.01,
    read_timeout_seconds=2.0,
    parallel_threshold_mib=1,
    parallel_connections=CONNECTIONS,
)
BODY = os.urandom(4 * MIB + 123)
STEP = -(-len(BODY) // CONNECTIONS)  # where each range starts: 0, STEP, 2*STEP, 3*STEP
RANGE_STARTS = [i * STEP for i in range(CONNECTIONS)]
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def downloader_config() -> DownloaderConfig:
    return CONFIG


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def completed(responses) -> downloader_pb2.DownloadCompleted:
    assert responses[-1].WhichOneof("event") == "completed"
    return responses[-1].completed


def ranged_counter(downloader: Downloader, outcome: str) -> float:
    value = downloader.metrics.registry.get_sample_value("ferry_download_ranged_total", {"outcome": outcome})
    return value or 0.0


def remote(
    size: int | None, *, ranges: bool = True, etag: str | None = '"v1"', modified: str | None = None
) -> RemoteFile:
    return RemoteFile(size, etag, modified, "application/octet-stream", "f.bin", ranges)


class TestTheDecision:
    def test_ranges_cover_the_file_exactly_once_in_order(self):
        planned = plan_ranges(remote(10 * MIB + 5), MIB, 4)
        assert planned is not None and len(planned) == 4
        assert planned[0].start == 0 and planned[-1].end == 10 * MIB + 4
        assert all(a.end + 1 == b.start for a, b in itertools.pairwise(planned))
        assert sum(r.size for r in planned) == 10 * MIB + 5

    def test_a_file_too_small_for_more_than_one_range_is_one_range(self):
        assert plan_ranges(remote(3), 0, 8) == [ByteRange(0, 0), ByteRange(1, 1), ByteRange(2, 2)]
        assert plan_ranges(remote(1), 0, 8) is None

    @pytest.mark.parametrize(
        "described",
        [
            remote(MIB),  # at the threshold, not over it
            remote(None),  # size unknown (chunked)
            remote(8 * MIB, ranges=False),  # no Accept-Ranges: bytes
            remote(8 * MIB, etag=None),  # no version to hold the ranges to
            remote(8 * MIB, etag='W/"weak"'),  # a weak ETag may not be used with If-Range
        ],
        ids=["at-threshold", "unknown-size", "no-ranges", "no-validator", "weak-etag-only"],
    )
    def test_one_stream_unless_large_sized_rangeable_and_versioned(self, described):
        assert plan_ranges(described, MIB, 4) is None

    def test_one_connection_is_one_stream(self):
        assert plan_ranges(remote(8 * MIB), MIB, 1) is None

    def test_last_modified_is_version_enough(self):
        assert plan_ranges(remote(8 * MIB, etag=None, modified="Wed, 02 Dec 2026 01:00:00 GMT"), MIB, 4)


class RangedBody:
    """A route serving `body` as a file server would, `pause` seconds between chunks (a per-connection rate cap).

    It records the Range header of every GET (None for a plain one) and how many answers are streaming now (and
    how many ranged ones at most); a test may change the body (and its ETag) after some range requests, ignore
    ranges, cut one range's first answer short, or redirect one range.
    """

    def __init__(self, body: bytes, *, pause: float = 0.0, chunk: int = CHUNK) -> None:
        self.versions = [(body, '"v1"')]
        self.pause = pause
        self.chunk = chunk
        self.ranges: list[str | None] = []
        self.streaming = 0  # answers whose body is being sent now
        self.ranges_streaming = 0  # of those, answers to a Range request
        self.most_ranges_streaming = 0
        self.change_after_ranges: int | None = None  # then answer with the second version, If-Range or not
        self.ignore_ranges = False
        self.cut_range_at: int | None = None  # the first answer to the range starting here stops halfway
        self.redirect_range_at: tuple[int, str] | None = None  # (start, location): that range is redirected

    def add_version(self, body: bytes, etag: str) -> None:
        self.versions.append((body, etag))

    def _current(self) -> tuple[bytes, str]:
        asked = sum(1 for r in self.ranges if r is not None)
        if self.change_after_ranges is not None and asked > self.change_after_ranges:
            return self.versions[1]
        return self.versions[0]

    def ranged_starts(self) -> list[int]:
        return [int(r.removeprefix("bytes=").split("-")[0]) for r in self.ranges if r is not None]

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range")
        if request.method == "GET":
            self.ranges.append(asked)
        body, etag = self._current()
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        start, end, status = 0, len(body) - 1, 200
        if asked is not None and not self.ignore_ranges:
            first, last = asked.removeprefix("bytes=").split("-")
            start, end, status = int(first), int(last) if last else len(body) - 1, 206
            if self.redirect_range_at is not None and self.redirect_range_at[0] == start:
                raise web.HTTPFound(self.redirect_range_at[1])
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
        cut = status == 206 and start == self.cut_range_at
        if cut:
            self.cut_range_at = None
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start + 1
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        ranged = asked is not None
        self.streaming += 1
        self.ranges_streaming += ranged
        self.most_ranges_streaming = max(self.most_ranges_streaming, self.ranges_streaming)
        try:
            stop = start + (end - start + 1) // 2 if cut else end + 1
            for offset in range(start, stop, self.chunk):
                await response.write(body[offset : min(offset + self.chunk, stop)])
                if self.pause:
                    await asyncio.sleep(self.pause)
            if cut:
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-range
        finally:
            self.streaming -= 1
            self.ranges_streaming -= ranged
        return response


def serve(http_server, name: str, source: RangedBody) -> str:
    return http_server.route(f"/{name}", source)


class TestRangedDownloads:
    def test_a_large_file_arrives_identical_over_one_request_per_range(self, grpc_stub, http_server, downloader):
        source = RangedBody(BODY)
        before = ranged_counter(downloader, "ranged")
        done = completed(events(grpc_stub, url=serve(http_server, "big.bin", source), target_dir="ranged"))
        assert sha256(Path(done.path).read_bytes()) == sha256(BODY)
        assert done.file_size == len(BODY) and done.file_name == "big.bin"
        assert source.ranges[0] is None, "the first answer, a plain GET, decided"
        assert sorted(source.ranged_starts()) == RANGE_STARTS and len(source.ranges) == CONNECTIONS + 1
        assert ranged_counter(downloader, "ranged") == before + 1

    def test_ranges_are_in_flight_at_once(self, grpc_stub, http_server):
        source = RangedBody(BODY, pause=0.02)  # each connection capped: ~3 MiB/s
        done = completed(events(grpc_stub, url=serve(http_server, "capped.bin", source), target_dir="capped"))
        assert Path(done.path).read_bytes() == BODY
        assert source.most_ranges_streaming == CONNECTIONS

    def test_a_file_at_or_under_the_threshold_is_one_stream(self, grpc_stub, http_server):
        small = BODY[:MIB]
        source = RangedBody(small)
        done = completed(events(grpc_stub, url=serve(http_server, "small.bin", source), target_dir="small"))
        assert Path(done.path).read_bytes() == small and source.ranges == [None]

    def test_a_source_that_does_not_advertise_ranges_is_one_stream(self, grpc_stub, http_server):
        async def plain(_request: web.Request) -> web.Response:
            return web.Response(body=BODY, headers={"ETag": '"v1"'})

        url = http_server.route("/plain.bin", plain)
        done = completed(events(grpc_stub, url=url, target_dir="plain"))
        assert Path(done.path).read_bytes() == BODY
        assert [h.get("Range") for h in http_server.gets("/plain.bin")] == [None]

    def test_aiohttps_file_server_is_ranged(self, grpc_stub, http_server):
        url = http_server.add_file("served.bin", BODY)
        done = completed(events(grpc_stub, url=url, target_dir="served"))
        assert Path(done.path).read_bytes() == BODY
        assert len([h for h in http_server.gets("/served.bin") if "Range" in h]) == CONNECTIONS


class TestFallbacks:
    def test_a_source_that_answers_ranges_with_the_whole_file_is_fetched_over_one_stream(
        self, grpc_stub, http_server, data_dir, downloader
    ):
        source = RangedBody(BODY)
        source.ignore_ranges = True  # says Accept-Ranges: bytes, answers 200 regardless
        before = ranged_counter(downloader, "fell_back_single")
        done = completed(events(grpc_stub, url=serve(http_server, "liar.bin", source), target_dir="liar"))
        assert Path(done.path).read_bytes() == BODY
        assert source.ranges[-1] is None, "the last request, a plain GET, fetched the file"
        assert leftovers(data_dir) == []
        assert ranged_counter(downloader, "fell_back_single") == before + 1

    def test_a_file_that_changes_between_ranges_restarts_over_one_stream(self, grpc_stub, http_server, data_dir):
        new_body = os.urandom(len(BODY))
        source = RangedBody(BODY)
        source.add_version(new_body, '"v2"')
        source.change_after_ranges = 2  # ranges after the second see v2, If-Range notwithstanding
        done = completed(events(grpc_stub, url=serve(http_server, "changing.bin", source), target_dir="changing"))
        assert sha256(Path(done.path).read_bytes()) == sha256(new_body), "one version, whole: the new one"
        assert source.ranges[-1] is None, "restarted with a plain GET"
        assert leftovers(data_dir) == []


class TestRangeFaults:
    def test_a_range_cut_short_resumes_alone_from_where_it_stopped(self, grpc_stub, http_server, data_dir):
        source = RangedBody(BODY)
        source.cut_range_at = STEP  # the second range
        done = completed(events(grpc_stub, url=serve(http_server, "cut.bin", source), target_dir="cut"))
        assert sha256(Path(done.path).read_bytes()) == sha256(BODY)
        starts = source.ranged_starts()
        resumed = [s for s in starts if s not in RANGE_STARTS]
        assert len(resumed) == 1 and STEP < resumed[0] < 2 * STEP, "the second range resumed mid-range"
        assert sorted(s for s in starts if s in RANGE_STARTS) == RANGE_STARTS, "no other range was asked again"
        assert leftovers(data_dir) == []

    def test_a_range_redirected_to_a_blocked_address_is_refused_and_leaves_nothing(self, client, http_server, data_dir):
        source = RangedBody(BODY, pause=0.01)
        source.redirect_range_at = (2 * STEP, "http://169.254.169.254/latest/meta-data")
        with pytest.raises(ferry.FerryError) as caught:
            client.download_file(serve(http_server, "redirected.bin", source), target_dir="redirected")
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason == "ADDRESS_BLOCKED"
        assert leftovers(data_dir) == []
        assert not (data_dir / "redirected" / "redirected.bin").exists()

    def test_a_file_over_the_size_limit_is_refused_before_any_range(self, grpc_stub, http_server, data_dir):
        source = RangedBody(BODY)
        code, details = status_of(
            grpc_stub, url=serve(http_server, "huge.bin", source), target_dir="huge", filesize_limit_bytes=2 * MIB
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(2 * MIB) in details
        assert source.ranges == [None], "no range was requested"
        assert leftovers(data_dir) == [] and not (data_dir / "huge" / "huge.bin").exists()


class TestCancellationAndProgress:
    def test_cancelling_closes_every_range_connection_and_leaves_no_temp_file(self, grpc_stub, http_server, data_dir):
        source = RangedBody(BODY, pause=0.1, chunk=32 * 1024)  # each range would take ~3 s
        call = grpc_stub.Download(
            downloader_pb2.DownloadRequest(url=serve(http_server, "slow.bin", source), target_dir="cancel")
        )
        for response in call:
            if response.WhichOneof("event") == "progress":
                break
        wait_for(lambda: source.ranges_streaming == CONNECTIONS, "every range to be streaming")
        call.cancel()
        # Well before any range could finish on its own (~3 s): the server sees every connection gone.
        wait_for(lambda: source.streaming == 0, "every range connection to close", timeout=1.5)
        wait_for(lambda: not leftovers(data_dir / "cancel"), "the temp file to be removed")
        assert list((data_dir / "cancel").iterdir()) == []

    def test_progress_counts_every_range_toward_the_files_size(self, grpc_stub, http_server):
        source = RangedBody(BODY, pause=0.005)
        responses = events(grpc_stub, url=serve(http_server, "progress.bin", source), target_dir="progress")
        assert responses[0].started.total_bytes == len(BODY)
        progress = [r.progress for r in responses if r.WhichOneof("event") == "progress"]
        assert len(progress) > 1 and {p.total_bytes for p in progress} == {len(BODY)}
        done = [p.bytes_done for p in progress]
        assert done == sorted(done) and done[-1] == len(BODY)
        assert len(source.ranged_starts()) == CONNECTIONS

    async def test_a_second_caller_joins_the_ranged_download_in_flight(
        self, grpc_addr, grpc_server, http_server, downloader
    ):
        source = RangedBody(BODY, pause=0.01)
        url = serve(http_server, "joined.bin", source)
        joins = downloader.metrics.registry.get_sample_value("ferry_download_joins_total") or 0.0
        async with ferry.AsyncClient(grpc_addr) as client:
            paths = await asyncio.gather(*(client.download_file(url, target_dir="joined") for _ in range(2)))
        assert paths[0] == paths[1] and paths[0].read_bytes() == BODY
        assert len(source.ranges) == CONNECTIONS + 1, "one transfer: the first GET and one request per range"
        assert downloader.metrics.registry.get_sample_value("ferry_download_joins_total") == joins + 1
