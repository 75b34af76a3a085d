"""A lifecycle preference is checked where the request comes in: 1 second to 100 years, a whole number.

Through `ferry serve` with the sample app: Encode, Upload and CreateUpload, and the inference RPCs (whose
handlers' outputs would carry the lifetime), each given the field or the
`x-ferry-object-lifecycle-preference` header. Past the bound is INVALID_ARGUMENT (INVALID_EXPIRY), a
header that is not the JSON it should be is INVALID_ARGUMENT (BAD_LIFECYCLE), never UNKNOWN, and nothing
is stored or queued.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

import ferry
from ferry.services.storage.base import MAX_EXPIRES_IN_SECONDS
from ferry.testing import StackProcess
from ferry.v1 import common_pb2, encoder_pb2, inference_pb2

APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
HEADER = "x-ferry-object-lifecycle-preference"
U64_MAX = 2**64 - 1
TOO_LONG = {"2^64-1": U64_MAX, "100 years and a second": MAX_EXPIRES_IN_SECONDS + 1}
# Header values, each with the reason it is refused for.
BAD_HEADERS = {
    "10^30": (f'{{"expiration_duration_seconds": {10**30}}}', "INVALID_EXPIRY"),
    "2^64-1": (f'{{"expiration_duration_seconds": {U64_MAX}}}', "INVALID_EXPIRY"),
    "negative": ('{"expiration_duration_seconds": -5}', "INVALID_EXPIRY"),
    "zero": ('{"expiration_duration_seconds": 0}', "INVALID_EXPIRY"),
    "1e400": ('{"expiration_duration_seconds": 1e400}', "BAD_LIFECYCLE"),
    "a float": ('{"expiration_duration_seconds": 3600.5}', "BAD_LIFECYCLE"),
    "true": ('{"expiration_duration_seconds": true}', "BAD_LIFECYCLE"),
    "a string": ('{"expiration_duration_seconds": "3600"}', "BAD_LIFECYCLE"),
    "nested": ('{"expiration_duration_seconds": {"seconds": 3600}}', "BAD_LIFECYCLE"),
    "deeply nested": ("[" * 3000, "BAD_LIFECYCLE"),  # past json's recursion, well inside gRPC's 8 KiB of metadata
    "5000 digits": ('{"expiration_duration_seconds": %s}' % ("9" * 5000), "BAD_LIFECYCLE"),
    "not an object": ("3600", "BAD_LIFECYCLE"),
    "not JSON": ("an hour", "BAD_LIFECYCLE"),
}

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    with StackProcess(["--data-dir", str(tmp_path_factory.mktemp("lifecycle")), "--app", APP]) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: StackProcess) -> Iterator[ferry.Client]:
    with stack.client() as client:
        yield client


def lifecycle(seconds: int | None) -> common_pb2.Lifecycle:
    return common_pb2.Lifecycle() if seconds is None else common_pb2.Lifecycle(expiration_seconds=seconds)


def encode(client: ferry.Client, seconds: int | None, metadata: Metadata = ()) -> Any:
    tensor = common_pb2.TensorHeader(dtype=common_pb2.DATA_TYPE_UINT8, shape=[2, 2, 3])
    header = encoder_pb2.EncodeHeader(tensor=tensor, format=encoder_pb2.MEDIA_FORMAT_PNG, lifecycle=lifecycle(seconds))
    requests = [encoder_pb2.EncodeRequest(header=header), encoder_pb2.EncodeRequest(chunk=bytes(12))]
    return client.encoder.Encode(iter(requests), metadata=metadata).files[0]


def upload(client: ferry.Client, seconds: int | None, metadata: Metadata = ()) -> Any:
    header = encoder_pb2.UploadHeader(file_name="a.txt", content_type="text/plain", lifecycle=lifecycle(seconds))
    requests = [encoder_pb2.UploadRequest(header=header), encoder_pb2.UploadRequest(chunk=b"kept")]
    return client.encoder.Upload(iter(requests), metadata=metadata).file


def create_upload(client: ferry.Client, seconds: int | None, metadata: Metadata = ()) -> Any:
    request = encoder_pb2.CreateUploadRequest(file_name="a.bin", lifecycle=lifecycle(seconds))
    return client.encoder.CreateUpload(request, metadata=metadata)


def run(client: ferry.Client, seconds: int | None, metadata: Metadata = ()) -> Any:
    request = inference_pb2.RunRequest(
        app_id="sample", path="/image", input_json='{"size": 8}', lifecycle=lifecycle(seconds)
    )
    return client.inference.Run(request, metadata=metadata)


def submit(client: ferry.Client, seconds: int | None, metadata: Metadata = ()) -> Any:
    request = inference_pb2.SubmitRequest(app_id="sample", input_json='{"text": "x"}', lifecycle=lifecycle(seconds))
    return client.inference.Submit(request, metadata=metadata)


def stream(client: ferry.Client, seconds: int | None, metadata: Metadata = ()) -> Any:
    request = inference_pb2.StreamRequest(app_id="sample", input_json='{"text": "x"}', lifecycle=lifecycle(seconds))
    return list(client.inference.Stream(request, metadata=metadata))


CALLS: dict[str, Callable[..., Any]] = {
    "Encode": encode,
    "Upload": upload,
    "CreateUpload": create_upload,
    "Run": run,
    "Submit": submit,
    "Stream": stream,
}


def refusal(call: Callable[[], Any]) -> ferry.FerryError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return ferry.FerryError.from_rpc_error(caught.value)


def stored_objects(stack: StackProcess) -> int:
    data_dir = Path(stack.args[stack.args.index("--data-dir") + 1])
    return sum(1 for _ in (data_dir / ".ferry" / "storage" / "objects").glob("*.json"))


@pytest.mark.parametrize("seconds", TOO_LONG.values(), ids=TOO_LONG.keys())
@pytest.mark.parametrize("rpc", CALLS, ids=CALLS.keys())
def test_a_lifetime_field_past_100_years_is_invalid_argument_and_nothing_is_stored(
    stack: StackProcess, client: ferry.Client, rpc: str, seconds: int
) -> None:
    before = stored_objects(stack)

    error = refusal(lambda: CALLS[rpc](client, seconds))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EXPIRY")
    assert "100 years" in error.message
    assert stored_objects(stack) == before


@pytest.mark.parametrize(("value", "reason"), BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
@pytest.mark.parametrize("rpc", CALLS, ids=CALLS.keys())
def test_a_lifecycle_header_that_is_not_a_lifetime_storage_can_keep_is_invalid_argument(
    stack: StackProcess, client: ferry.Client, rpc: str, value: str, reason: str
) -> None:
    before = stored_objects(stack)

    error = refusal(lambda: CALLS[rpc](client, None, ((HEADER, value),)))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert len(error.message) < 200
    assert stored_objects(stack) == before


def test_a_zero_lifetime_field_is_invalid_argument_before_anything_is_queued(client: ferry.Client) -> None:
    error = refusal(lambda: submit(client, 0))

    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EXPIRY")


@pytest.mark.parametrize("rpc", ["Encode", "Upload"])
def test_exactly_100_years_is_kept_for_100_years(client: ferry.Client, rpc: str) -> None:
    stored = CALLS[rpc](client, MAX_EXPIRES_IN_SECONDS)

    expected = datetime.now(UTC) + timedelta(seconds=MAX_EXPIRES_IN_SECONDS)
    assert abs(stored.expires_at.ToDatetime(tzinfo=UTC) - expected) < timedelta(minutes=5)


def test_a_run_within_the_bound_runs(client: ferry.Client) -> None:
    response = run(client, None, ((HEADER, '{"expiration_duration_seconds": 3600}'),))

    assert json.loads(response.output_json)["image"]["url"].startswith("http")
