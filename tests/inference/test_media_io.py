"""Media in and out of handlers: the runner downloads URL inputs and encodes tensors left in media outputs."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

import ferry
from ferry.testing import StackProcess
from ferry.v1 import inference_pb2
from tests.harness import wait_for

APPS = Path(__file__).with_name("media_app.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media-stack")


@pytest.fixture(scope="module")
def stack(data_dir):
    data = data_dir
    # The test's HTTP server is on loopback; anything else private stays refused.
    with StackProcess(["--data-dir", str(data), "--allow-hosts", "127.0.0.1/32", "--app", f"{APPS}:MediaApp"]) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with stack.client() as client:
        yield client


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def test_url_inputs_are_downloaded_once_each_before_the_handler_and_removed_after(client, http_server):
    for name, size in (("photo.png", 3000), ("a.bin", 10), ("b.bin", 20)):
        (http_server.root / name).write_bytes(b"x" * size)
    photo = f"{http_server.base_url}/photo.png"
    output = client.run(
        "media",
        {"image_url": photo, "extra_urls": [f"{http_server.base_url}/a.bin", f"{http_server.base_url}/b.bin", photo]},
        path="/inspect",
    )
    assert output["sizes"] == {"image_url": [3000], "extra_urls": [10, 20, 3000]}
    assert output["paths"]["extra_urls"][2] == output["paths"]["image_url"][0], "one URL, one download"
    assert output["sdk_reuses_runner_copy"] is True, "ferry.download_file in the handler gets the runner's copy"
    assert http_server.hits == {"/photo.png": 1, "/a.bin": 1, "/b.bin": 1}
    assert not any(Path(p).exists() for group in output["paths"].values() for p in group), "inputs are removed after"


def test_the_next_requests_inputs_download_while_the_current_handler_runs(client, http_server, data_dir):
    (http_server.root / "next.bin").write_bytes(b"n" * 1234)
    (http_server.root / "dropped.bin").write_bytes(b"d" * 99)
    busy = client.submit("media", {}, path="/hang")  # holds MediaApp's only slot until cancelled
    wait_for(lambda: busy.status().state == "IN_PROGRESS", "the slot to be taken")
    following = client.submit("media", {"image_url": f"{http_server.base_url}/next.bin"}, path="/inspect")
    dropped = client.submit("media", {"image_url": f"{http_server.base_url}/dropped.bin"}, path="/inspect")
    wait_for(lambda: http_server.hits.get("/next.bin") == 1, "the next in line to fetch its input")
    assert following.status().state == "QUEUED" and busy.status().state == "IN_PROGRESS"
    assert "/dropped.bin" not in http_server.hits, "only the next in line prefetches"

    busy.cancel()
    assert following.get(timeout=30)["sizes"] == {"image_url": [1234]}
    wait_for(lambda: http_server.hits.get("/dropped.bin") == 1, "the new next in line to prefetch")
    dropped.cancel()
    wait_for(lambda: not list(data_dir.rglob("dropped.bin")), "a cancelled request's prefetched input to be deleted")
    assert http_server.hits == {"/next.bin": 1, "/dropped.bin": 1}


def test_data_uri_inputs_are_decoded_like_urls(client):
    data_uri = "data:application/octet-stream;base64," + base64.b64encode(b"12345").decode()
    output = client.run("media", {"image_url": data_uri}, path="/inspect")
    assert output["sizes"] == {"image_url": [5]}


def test_a_url_the_guard_refuses_keeps_the_guards_status(client):
    with pytest.raises(ferry.FerryError) as caught:
        client.run("media", {"image_url": "http://10.255.255.1/secret.png"}, path="/inspect")
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_missing_input_is_not_found_and_the_other_downloads_leave_nothing(client, http_server, stack):
    (http_server.root / "there.bin").write_bytes(b"y" * 100)
    with pytest.raises(ferry.FerryError) as caught:
        client.run(
            "media",
            {"image_url": f"{http_server.base_url}/there.bin", "mask_url": f"{http_server.base_url}/missing.png"},
            path="/inspect",
        )
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert client.run("media", {"steps": 3}) == {"steps": 3}, "the runner keeps serving"


def test_tensors_left_in_media_fields_are_encoded_by_the_runner(client):
    output = client.run("media", {}, path="/tensors")
    gradient = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (24, 1, 3))

    image = ferry.Image.model_validate(output["image"])
    assert (image.content_type, image.width, image.height) == ("image/png", 32, 24)
    assert np.array_equal(np.array(PILImage.open(io.BytesIO(fetch(image.url)))), gradient)

    preview = ferry.Image.model_validate(output["preview"])
    assert preview.content_type == "image/jpeg", "Encode('jpeg') on the field picks the format"

    frames = [ferry.Image.model_validate(item) for item in output["frames"]]
    assert len(frames) == 2, "a batch tensor in a list field is one file per item"
    assert np.array_equal(np.array(PILImage.open(io.BytesIO(fetch(frames[1].url)))), 255 - gradient)

    audio = ferry.Audio.model_validate(output["audio"])
    assert (audio.sample_rate, audio.sample_count, audio.channels) == (8000, 8000, 1)
    with av.open(io.BytesIO(fetch(audio.url))) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) == 8000

    clip = ferry.Video.model_validate(output["clip"])
    assert (clip.fps, clip.frame_count) == (8, 4)
    assert ferry.Image.model_validate(output["made_here"]).width == 32, (
        "toolkit files built by the handler pass as they are"
    )


def test_a_tensor_of_the_wrong_shape_for_its_output_is_internal_naming_the_field(client):
    with pytest.raises(ferry.FerryError) as caught:
        client.run("media", {}, path="/wrong-shape")
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "output field 'image'" in caught.value.message
    assert client.run("media", {"steps": 1}) == {"steps": 1}, "the runner keeps serving"


def test_an_audio_tensor_without_a_sample_rate_says_how_to_declare_one(client):
    with pytest.raises(ferry.FerryError) as caught:
        client.run("media", {}, path="/no-sample-rate")
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "Encode(sample_rate=...)" in caught.value.message


def test_outputs_expire_as_the_requests_lifecycle_asks(client):
    before = datetime.now(UTC)
    output = client.run("media", {}, path="/tensors", expires_in=120)
    for field in ("image", "audio", "made_here"):
        expires_at = ferry.File.model_validate(output[field]).expires_at
        assert expires_at is not None, f"{field} has the request's expiry"
        assert 110 <= (expires_at - before).total_seconds() <= 130
    assert ferry.File.model_validate(client.run("media", {}, path="/tensors")["image"]).expires_at is None


def test_the_lifecycle_header_works_for_app_requests_as_for_uploads(client):
    before = datetime.now(UTC)
    header = (("x-ferry-object-lifecycle-preference", '{"expiration_duration_seconds": 300}'),)
    request = inference_pb2.RunRequest(app_id="media", path="/tensors", input_json="{}")
    output = json.loads(client.inference.Run(request, metadata=header).output_json)
    expires_at = ferry.File.model_validate(output["made_here"]).expires_at
    assert expires_at is not None and 290 <= (expires_at - before).total_seconds() <= 310
