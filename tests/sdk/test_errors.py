"""One family of errors for apps, the runner, the services and the SDK.

Raised on one side, the same class on the other.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import ferry
from ferry import errors
from ferry.testing import StackProcess

SAMPLE_APP = f"{Path(__file__).resolve().parents[1] / 'inference' / 'sample_app.py'}:SampleApp"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with (
        StackProcess(["--data-dir", str(tmp_path_factory.mktemp("stack")), "--app", SAMPLE_APP]) as stack,
        stack.client() as client,
    ):
        yield client


def test_an_app_raises_an_sdk_error_and_its_caller_catches_that_class_with_its_reason(client):
    with pytest.raises(errors.InvalidArgument) as caught:
        client.run("sample", {"text": "xyzzy"}, path="/refuse")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_WORD")
    assert caught.value.message == "'xyzzy' is not a word this model knows"


def test_the_services_statuses_arrive_as_the_class_their_code_names(client):
    with pytest.raises(errors.NotFound) as caught:
        client.run("no-such-app", {})
    assert caught.value.reason == "UNKNOWN_APP"
    with pytest.raises(errors.PermissionDenied):
        client.download_file("http://169.254.169.254/latest/meta-data/")


def test_every_error_is_a_ferry_error_that_says_its_code():
    error = errors.Unavailable("storage is down", reason="STORAGE_UNAVAILABLE")
    assert isinstance(error, ferry.FerryError)
    assert str(error) == "UNAVAILABLE: storage is down"
    assert (error.code, error.reason, error.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        "storage is down",
    )
    assert errors.NotFound("x").reason == "NOT_FOUND", "a class's own reason when none is given"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.CANCELLED, errors.Cancelled),
        (grpc.StatusCode.INTERNAL, errors.Internal),
    ],
)
def test_of_builds_the_class_a_code_names(code, kind):
    error = ferry.FerryError.of(code, "message", "REASON")
    assert type(error) is kind and (error.code, error.reason) == (code, "REASON")


def test_a_code_without_a_class_still_carries_its_code():
    error = ferry.FerryError.of(grpc.StatusCode.DATA_LOSS, "gone")
    assert (type(error), error.code, error.reason) == (ferry.FerryError, grpc.StatusCode.DATA_LOSS, "DATA_LOSS")
