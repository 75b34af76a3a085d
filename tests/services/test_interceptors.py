"""The status interceptor: every RPC of every kind answers malformed requests INVALID_ARGUMENT, raised
errors with their own status, and bugs INTERNAL — never grpc.aio's UNKNOWN."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.errors import NotFound
from ferry.services.errors import MAX_MESSAGE_CHARS
from ferry.testing import StackProcess
from ferry.v1 import (
    downloader_pb2,
    downloader_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)

SAMPLE_APP = f"{Path(__file__).resolve().parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
PLACEHOLDER = "AAAA"
BAD_UTF8 = b"\xff\xfe\xfd\xfc"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with StackProcess(["--data-dir", str(tmp_path_factory.mktemp("stack")), "--app", SAMPLE_APP]) as stack:
        yield stack


@pytest.fixture(scope="module")
def channel(stack):
    with grpc.insecure_channel(stack.grpc_address) as channel:
        yield channel


def with_bad_utf8(message) -> bytes:
    """The message's bytes with its string field `PLACEHOLDER` replaced by invalid UTF-8."""
    data = message.SerializeToString()
    assert data.count(PLACEHOLDER.encode()) == 1
    return data.replace(PLACEHOLDER.encode(), BAD_UTF8)


def raw(channel, kind: str, method: str):
    return getattr(channel, kind)(method, request_serializer=lambda data: data, response_deserializer=lambda data: data)


def reason_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason


def test_a_unary_request_with_invalid_utf8_is_invalid_argument(channel):
    run = raw(channel, "unary_unary", "/ferry.v1.InferenceService/Run")
    with pytest.raises(grpc.RpcError) as caught:
        run(with_bad_utf8(inference_pb2.RunRequest(app_id=PLACEHOLDER)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "MALFORMED_REQUEST"


def test_a_unary_request_to_a_streaming_response_is_refused_the_same_way(channel):
    download = raw(channel, "unary_stream", "/ferry.v1.DownloaderService/Download")
    with pytest.raises(grpc.RpcError) as caught:
        list(download(with_bad_utf8(downloader_pb2.DownloadRequest(url=PLACEHOLDER)), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_streamed_request_is_refused_at_the_message_that_does_not_parse(channel):
    upload = raw(channel, "stream_unary", "/ferry.v1.EncoderService/Upload")
    header = with_bad_utf8(encoder_pb2.UploadRequest(header=encoder_pb2.UploadHeader(file_name=PLACEHOLDER)))
    with pytest.raises(grpc.RpcError) as caught:
        upload(iter([header, encoder_pb2.UploadRequest(chunk=b"x").SerializeToString()]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bidirectional_stream_is_refused_the_same_way(channel):
    realtime = raw(channel, "stream_stream", "/ferry.v1.InferenceService/Realtime")
    opening = with_bad_utf8(inference_pb2.RealtimeRequest(open=inference_pb2.RealtimeOpen(app_id=PLACEHOLDER)))
    with pytest.raises(grpc.RpcError) as caught:
        list(realtime(iter([opening]), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_server_keeps_serving_after_malformed_requests(stack, channel):
    test_a_unary_request_with_invalid_utf8_is_invalid_argument(channel)
    with stack.client() as client:
        assert client.health() == "SERVING"
        assert client.run("sample", {"text": "ok"}) == {"text": "ok"}


def test_a_message_echoing_a_huge_input_is_cut_short_so_the_status_still_arrives(stack):
    # A 1 MiB app id echoed whole would exceed the client's 8 KiB trailer limit: the caller would see
    # the transport's RESOURCE_EXHAUSTED ("Stream removed") instead of ferry's NOT_FOUND.
    with grpc.insecure_channel(stack.grpc_address) as channel:
        run = channel.unary_unary(
            "/ferry.v1.InferenceService/Run",
            request_serializer=inference_pb2.RunRequest.SerializeToString,
            response_deserializer=inference_pb2.RunResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            run(inference_pb2.RunRequest(app_id="x" * (1 << 20)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) <= MAX_MESSAGE_CHARS


# -- errors a handler raises, on a server of the test's own ---------------------------------------------


class Raising:
    """A servicer whose handlers raise instead of aborting, as every servicer may."""

    async def lookup(self, request, context):
        raise NotFound("no such thing", reason="NO_SUCH_THING")

    async def crash(self, request, context):
        raise KeyError("secret internals")

    async def crash_streaming(self, request, context):
        yield b"first"
        raise RuntimeError("secret internals")


@pytest.fixture(scope="module")
def grpc_add_to_server():
    def add(servicer: Raising, server: grpc.aio.Server) -> None:
        handlers = {
            "Lookup": grpc.unary_unary_rpc_method_handler(servicer.lookup),
            "Crash": grpc.unary_unary_rpc_method_handler(servicer.crash),
            "CrashStreaming": grpc.unary_stream_rpc_method_handler(servicer.crash_streaming),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Raising", handlers)])

    return add


@pytest.fixture(scope="module")
def grpc_servicer():
    return Raising()


def test_a_raised_ferry_error_is_its_status_with_its_reason(grpc_server, grpc_addr):
    with grpc.insecure_channel(grpc_addr) as channel, pytest.raises(grpc.RpcError) as caught:
        raw(channel, "unary_unary", "/test.Raising/Lookup")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and caught.value.details() == "no such thing"
    assert reason_of(caught.value) == "NO_SUCH_THING"


@pytest.mark.parametrize(("kind", "method"), [("unary_unary", "Crash"), ("unary_stream", "CrashStreaming")])
def test_a_bug_is_internal_logged_and_its_details_stay_on_the_server(grpc_server, grpc_addr, caplog, kind, method):
    with (
        caplog.at_level(logging.ERROR, logger="ferry.services.interceptors"),
        grpc.insecure_channel(grpc_addr) as channel,
    ):
        call = raw(channel, kind, f"/test.Raising/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            answer = call(b"", timeout=10)
            if kind == "unary_stream":
                list(answer)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    assert any("secret internals" in str(record.exc_info[1]) for record in caplog.records if record.exc_info)


# -- every service's bad request, through the interceptor ------------------------------------------------


def test_each_service_answers_a_bad_request_with_its_status_and_reason(stack, channel):
    downloader = downloader_pb2_grpc.DownloaderServiceStub(channel)
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    inference = inference_pb2_grpc.InferenceServiceStub(channel)
    bad_requests = {
        "Download without a URL": (
            lambda: list(downloader.Download(downloader_pb2.DownloadRequest(url=""), timeout=10)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_URL",
        ),
        "Upload with a content type that is no media type": (
            lambda: encoder.Upload(
                iter(
                    [encoder_pb2.UploadRequest(header=encoder_pb2.UploadHeader(file_name="a.txt", content_type="text"))]
                ),
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_CONTENT_TYPE",
        ),
        "Run of an app nobody hosts": (
            lambda: inference.Run(inference_pb2.RunRequest(app_id="nobody"), timeout=10),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_APP",
        ),
        "Run with a misspelled field": (
            lambda: inference.Run(inference_pb2.RunRequest(app_id="sample", input_json='{"txt": "a"}'), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_INPUT",
        ),
    }
    for what, (call, code, reason) in bad_requests.items():
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert (caught.value.code(), reason_of(caught.value)) == (code, reason), what
    with stack.client() as client:
        assert client.health() == "SERVING"
