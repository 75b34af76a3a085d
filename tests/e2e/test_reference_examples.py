"""The reference documentation's own examples (`../shared/reference/`), run as written against `ferry serve`.

Only the import lines differ (`import ferry.inference as fal`, `from ferry.toolkit import …`,
`import ferry as fal_client`); the apps live in `tests/e2e/reference/`, each saying what else its page
left as a placeholder. Stacks run with default flags: inputs reach them the way the reference says
they should — uploaded to the stack's own storage first, or as data URIs.
"""

from __future__ import annotations

import base64
import io
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import ferry as fal_client  # was: import fal_client
from ferry.inference.schema import input_schema
from ferry.testing import StackProcess
from ferry.toolkit import Audio, File, Image, Video, download_file  # was: from fal.toolkit import …
from tests.e2e.reference.playground_io import Datasets, ExplicitHints
from tests.e2e.test_toolkit_stack import write_mp4, write_wav

REFERENCE = Path(__file__).resolve().parent / "reference"


def app(spec: str) -> list[str]:
    return ["--app", str(REFERENCE / spec)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Default flags: no --allow-private-networks, no --allow-hosts."""
    apps = [
        *app("download_input.py:MyModel"),
        *app("compressed_file.py:MyApp"),
        *app("playground_io.py:MyFileApp"),
        *app("playground_io.py:MyImageApp"),
    ]
    with StackProcess(["--data-dir", str(tmp_path_factory.mktemp("stack")), *apps]) as stack:
        yield stack


@pytest.fixture
def default_stack(stack, monkeypatch):
    """The module-level helpers (`ferry.upload_file`, `fal_client.subscribe`, …) talk to `stack`."""
    monkeypatch.setenv("FERRY_ADDRESS", stack.grpc_address)
    return stack


def png_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.linear_gradient("L").resize(size).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


# -- server-side-files.md --------------------------------------------------------------------------------


def test_download_file_into_tmp_inputs_inside_an_endpoint(default_stack, tmp_path):
    name = f"clip-{uuid.uuid4().hex[:8]}.mp4"
    video = write_mp4(tmp_path / name)
    video_url = fal_client.upload_file(video)
    try:
        output = fal_client.run("my-model", {"video_url": video_url})
        assert output == {"output": {"path": f"/tmp/inputs/{name}", "size": video.stat().st_size}}
        assert Path(f"/tmp/inputs/{name}").read_bytes() == video.read_bytes()
    finally:
        Path(f"/tmp/inputs/{name}").unlink(missing_ok=True)


def test_download_file_caching_as_the_page_shows_it(default_stack, tmp_path):
    data_dir = Path("/data")
    created = not data_dir.exists()
    try:
        (data_dir / "inputs").mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pytest.skip("/data cannot be created on this machine")
    url = fal_client.upload(b"cached bytes", "application/octet-stream", f"{uuid.uuid4().hex}.bin")
    try:
        path = download_file(url, target_dir="/data/inputs")

        path = download_file(url, target_dir="/data/inputs")

        path = download_file(url, target_dir="/data/inputs", force=True)
        assert path.parent == Path("/data/inputs") and path.read_bytes() == b"cached bytes"
    finally:
        path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)


def test_data_uris_are_decoded_without_a_network_request(default_stack, tmp_path):
    path = download_file("data:text/plain;base64," + base64.b64encode(b"inline").decode(), target_dir=tmp_path)
    assert path.read_bytes() == b"inline"


def test_model_weights_downloaded_in_setup(tmp_path, http_server):
    weights = http_server.add_file("weights.bin", b"\x01" * 4096)
    with StackProcess(
        ["--data-dir", str(tmp_path / "data"), *app("model_weights.py:MyModel"), "--allow-hosts", "127.0.0.1/32"],
        env={"WEIGHTS_URL": weights},
    ) as stack, stack.client() as client:
        loaded = client.run("my-model", {})
    assert loaded["size"] == 4096 and "/.ferry/model_weights/" in loaded["path"]


@pytest.fixture(scope="module")
def outputs_stack(tmp_path_factory):
    apps = [*app("returning_files.py:MyModel"), *app("basic_endpoint.py:MyApp")]
    with StackProcess(["--data-dir", str(tmp_path_factory.mktemp("outputs")), *apps]) as stack:
        yield stack


def test_returning_an_image_from_an_endpoint(outputs_stack):
    with outputs_stack.client() as client:
        out = client.run("my-model", {"prompt": "a gradient"})
    assert (out["image"]["width"], out["image"]["height"]) == (64, 48)
    assert out["image"]["content_type"] == "image/png" and out["image"]["url"].startswith(outputs_stack.cdn_url)
    assert Image.model_validate(out["image"]).to_pil().size == (64, 48)


def test_creating_files_as_the_page_lists_them(default_stack, tmp_path):
    pil_image = PILImage.new("RGB", (20, 10), "teal")
    raw_bytes = png_bytes()
    wav_bytes = write_wav(tmp_path / "clip.wav", seconds=0.25).read_bytes()
    data = b"glTF binary"
    written = [Path("/tmp/output.png"), Path("/tmp/output.mp4"), Path("/tmp/output.wav"), Path("/tmp/result.obj")]
    pil_image.save("/tmp/output.png")
    write_mp4(Path("/tmp/output.mp4"))
    write_wav(Path("/tmp/output.wav"))
    Path("/tmp/result.obj").write_text("v 0 0 0\n")
    try:
        image = Image.from_pil(pil_image)
        assert (image.width, image.height) == (20, 10)
        image = Image.from_pil(pil_image, format="webp")
        assert image.content_type == "image/webp"
        image = Image.from_bytes(raw_bytes, format="png")
        assert (image.width, image.height) == (40, 30)
        image = Image.from_path("/tmp/output.png")
        assert (image.width, image.height) == (20, 10)

        video = Video.from_path("/tmp/output.mp4")
        assert (video.width, video.height, video.content_type) == (32, 24, "video/mp4")
        audio = Audio.from_path("/tmp/output.wav")
        assert (audio.sample_rate, audio.content_type) == (16000, "audio/wav")
        audio = Audio.from_bytes(wav_bytes, content_type="audio/wav", file_name="output.wav")
        assert audio.file_name == "output.wav" and audio.duration_seconds == pytest.approx(0.25)

        generic = File.from_path("/tmp/result.obj")
        assert generic.as_bytes() == b"v 0 0 0\n"
        generic = File.from_bytes(data, content_type="application/octet-stream", file_name="model.glb")
        assert (generic.file_name, generic.file_size) == ("model.glb", len(data))
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def test_a_compressed_file_is_extracted_and_globbed(default_stack):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("a.png", png_bytes())
        zip_file.writestr("b.png", png_bytes())
        zip_file.writestr("notes.txt", "not an image")
    archive_url = fal_client.upload(archive.getvalue(), "application/zip", "frames.zip")
    assert fal_client.run("my-app", {"archive_url": archive_url}) == {"file_count": 2}


# -- endpoints.md ------------------------------------------------------------------------------------------


def test_a_basic_endpoint_and_a_second_path(outputs_stack):
    with outputs_stack.client() as client:
        assert client.run("my-app", {"prompt": "abc"}) == {"text": "cba"}
        assert client.run("my-app", {"prompt": "abc"}, path="/enhance") == {"text": "ABC"}


# -- playground-schema-conventions.md ----------------------------------------------------------------------


def test_file_input_and_file_output(default_stack):
    file_url = fal_client.upload(b"abc123", "application/octet-stream", "file.bin")
    out = fal_client.run("my-file-app", {"file_url": file_url})
    assert set(out["file"]) >= {"url", "content_type", "file_name", "file_size"}
    assert File.model_validate(out["file"]).as_bytes() == b"321cba"


def test_image_input_and_image_output_with_width_and_height_at_the_top(default_stack):
    image_url = fal_client.upload(png_bytes((40, 30)), "image/png")
    out = fal_client.run("my-image-app", {"image_url": image_url})
    assert (out["image"]["width"], out["image"]["height"]) == (40, 30)
    flipped = np.asarray(Image.model_validate(out["image"]).to_pil())
    original = np.asarray(PILImage.open(io.BytesIO(png_bytes((40, 30)))))
    assert np.array_equal(flipped, original[:, ::-1])


def test_the_pages_playground_hints():
    assert input_schema(ExplicitHints)["properties"]["foo"]["ui"] == {"field": "image"}
    hints = {name: prop["ui"] for name, prop in input_schema(Datasets)["properties"].items()}
    assert hints["image_urls"] == {"field": "image", "dataset": True}
    assert hints["video_urls"] == {"field": "video", "dataset": True}
    assert hints["audio_urls"]["dataset"] is True


# -- client-uploads.md -------------------------------------------------------------------------------------


def test_upload_then_subscribe_with_the_url(default_stack, tmp_path):
    PILImage.new("RGB", (8, 6), "red").save(tmp_path / "image.png")

    url = fal_client.upload_file(tmp_path / "image.png")
    print(url)

    image_bytes = (tmp_path / "image.png").read_bytes()
    url = fal_client.upload(image_bytes, "image/png")

    result = fal_client.subscribe("my-image-app", arguments={
        "image_url": url  # CDN URL from upload
    })
    assert (result["image"]["width"], result["image"]["height"]) == (8, 6)


def test_upload_image_sends_a_jpeg(default_stack):
    image = PILImage.new("RGB", (16, 16), "blue")
    url = fal_client.upload_image(image)
    assert File(url=url).as_bytes()[:3] == b"\xff\xd8\xff"


def test_a_data_uri_is_a_model_input(default_stack):
    result = fal_client.subscribe("my-image-app", arguments={
        "image_url": "data:image/png;base64," + base64.b64encode(png_bytes((5, 4))).decode()
    })
    assert (result["image"]["width"], result["image"]["height"]) == (5, 4)


def test_subscribe_reports_queue_updates_as_the_reference_client_does(default_stack):
    seen_logs: list[str] = []

    def on_queue_update(update):
        if isinstance(update, fal_client.InProgress):
            for log in update.logs:
                seen_logs.append(log["message"])

    result = fal_client.subscribe(
        "my-image-app",
        arguments={"image_url": "data:image/png;base64," + base64.b64encode(png_bytes((3, 3))).decode()},
        with_logs=True,
        on_queue_update=on_queue_update,
    )
    assert result["image"]["width"] == 3
    assert isinstance(seen_logs, list)
