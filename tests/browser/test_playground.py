"""The playground in a real browser (headless chromium), against `ferry serve` hosting the example apps."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.select import Select

from ferry.testing import StackProcess
from tests.browser.page import Page
from tests.harness import HttpFileServer

SAMPLE_APP = f"{Path(__file__).parents[1] / 'inference' / 'sample_app.py'}:SampleApp"
FORM_APP = f"{Path(__file__).parent / 'form_app.py'}:FormApp"
APPS = (
    "ferry.inference.apps.upscale:Upscaler",
    "ferry.inference.apps.text_to_video:TextToVideo",
    "ferry.inference.apps.text_to_audio:TextToAudio",
    SAMPLE_APP,
    FORM_APP,
)
# How long a script that would run is given to show it: the control runs its script within 0.1 s.
SCRIPT_GRACE_SECONDS = 2
# The mark in this document's storage; a sandboxed document has none to read (its origin is opaque).
STORED_MARK = 'try { return localStorage.getItem("script-ran"); } catch { return null; }'
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
# Sets a marker on whatever origin runs it, and tells the page above it.
MARKER_SCRIPT = (
    b"<!doctype html><title>untouched</title><h1>hello</h1><script>"
    b'localStorage.setItem("script-ran", location.origin); document.title = "script ran";'
    b"</script>"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    data = tmp_path_factory.mktemp("playground") / "data"
    apps = [flag for app in APPS for flag in ("--app", app)]
    with StackProcess(["--data-dir", str(data), *apps]) as stack:
        yield stack


def png(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def upload_png(page: Page, tmp_path: Path, width: int, height: int) -> None:
    source = tmp_path / "input.png"
    source.write_bytes(png(width, height))
    page.field("image_url", "input[type=file]").send_keys(str(source))
    page.wait_until(lambda: "/files/" in page.field("image_url", "input[type=url]").get_attribute("value"))
    page.wait_until(lambda: page.js("return document.querySelector('.preview img')?.naturalWidth") == width)


def test_the_page_lists_every_app_and_endpoint(stack, page):
    page.open(stack.cdn_url, "upscaler/")
    links = {link.get_attribute("data-endpoint") for link in page.find_all("[data-endpoint]")}
    assert {"upscaler/", "text-to-video/", "text-to-audio/", "sample/", "sample/slow"} <= links
    page.shot("apps")


def test_the_upscaler_takes_a_png_by_upload_and_shows_an_image_twice_as_wide(stack, page, tmp_path):
    page.open(stack.cdn_url, "upscaler/")
    upload_png(page, tmp_path, 48, 32)
    page.shot("uploaded")

    page.run()
    page.wait_for_status("Completed")
    image = page.find("figure[data-kind=image] img")
    page.wait_until(lambda: page.js("return arguments[0].complete && arguments[0].naturalWidth", image))
    page.shot("result")

    assert page.js("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) == [96, 64]
    assert "96×64 px" in page.find("figure[data-kind=image] figcaption").text
    running = [text for text in page.seen_statuses() if text.startswith("Running:")]
    assert running, f"no progress was shown: {page.seen_statuses()}"
    assert page.find("#run-progress").get_attribute("value") == "1"


def test_text_to_video_shows_progress_events_and_a_playable_video(stack, page):
    page.open(stack.cdn_url, "text-to-video/")
    page.set_value("prompt", "a ferry at dawn", "textarea")
    page.set_value("num_frames", "24")
    page.set_value("width", "128")
    page.set_value("height", "96")
    page.run()
    page.wait_for_status("Completed", timeout=60)
    video = page.find("figure[data-kind=video] video")
    page.wait_until(lambda: page.js("return arguments[0].readyState", video) >= 2)  # HAVE_CURRENT_DATA: decodable
    page.shot("video")

    progress = {text for text in page.seen_statuses() if text.startswith("Running:")}
    assert "Running: 24 of 24 (100%)." in progress
    assert len(progress) >= 2, f"progress did not move: {progress}"
    assert page.js("return [arguments[0].videoWidth, arguments[0].videoHeight]", video) == [128, 96]


def test_text_to_audio_shows_an_audio_player(stack, page):
    page.open(stack.cdn_url, "text-to-audio/")
    page.set_value("prompt", "ferry", "textarea")
    page.set_value("duration_seconds", "1.5")
    page.run()
    page.wait_for_status("Completed", timeout=60)
    audio = page.find("figure[data-kind=audio] audio")
    page.wait_until(lambda: page.js("return arguments[0].readyState", audio) >= 2)
    page.shot("audio")

    assert audio.get_attribute("controls") is not None
    assert page.js("return arguments[0].duration", audio) == pytest.approx(1.5, abs=0.05)


def test_a_bad_input_shows_each_error_under_the_field_it_names(stack, page):
    page.open(stack.cdn_url, "text-to-video/")
    page.set_value("num_frames", "0")  # and the required prompt left empty
    page.run()
    page.wait_until(lambda: page.find("#banner").is_displayed())
    page.shot("bad-input")

    prompt_error = page.find('[data-path="prompt"] .error')
    frames_error = page.find('[data-path="num_frames"] .error')
    assert prompt_error.is_displayed() and "required" in prompt_error.text.lower()
    assert frames_error.is_displayed() and "greater than or equal to 1" in frames_error.text
    assert page.field("num_frames", "input[type=number]").get_attribute("aria-invalid") == "true"
    assert not page.find('[data-path="fps"] .error').is_displayed()
    assert not page.find("#run").is_displayed()  # refused at submit: nothing ran


def test_cancel_stops_a_long_request(stack, page):
    page.open(stack.cdn_url, "sample/slow")
    page.set_value("steps", "600")
    page.set_value("step_seconds", "0.05")
    page.run()
    page.wait_for_status("Running:")
    page.shot("running")
    page.find("#cancel").click()
    page.wait_for_status("Cancelled", timeout=10)
    page.shot("cancelled")

    request_id = page.find("#run").get_attribute("data-request-id")
    status = httpx.get(f"{stack.cdn_url}/queue/ferry/sample/requests/{request_id}/status").json()
    assert status["status"] == "COMPLETED" and status["error_type"]
    result = httpx.get(f"{stack.cdn_url}/queue/ferry/sample/requests/{request_id}")
    assert result.status_code == 400  # a cancelled request has no output
    assert all("600 of 600" not in text for text in page.seen_statuses())
    assert page.find("#cancel").get_attribute("disabled") is not None


def test_every_control_has_a_label(stack, page):
    page.open(stack.cdn_url, "upscaler/")
    for link in [link.get_attribute("data-endpoint") for link in page.find_all("[data-endpoint]")]:
        page.open(stack.cdn_url, link)
        unlabelled = page.js(
            """return [...document.querySelectorAll("input, select, textarea, button")]
                 .filter((c) => c.offsetParent !== null)
                 .filter((c) => !(c.labels?.length || c.getAttribute("aria-label") ||
                                  c.getAttribute("aria-labelledby") || c.textContent.trim()))
                 .map((c) => c.outerHTML)"""
        )
        assert unlabelled == [], link


def test_a_form_renders_every_kind_of_field_from_the_schema(stack, page):
    page.open(stack.cdn_url, "forms/")
    page.shot("form")

    # The handler's docstring (ListEndpoints' description), not the input model's.
    assert page.find("#endpoint-description").text == (
        "Echoes every field back, with a log line and a partial output on the way."
    )
    title = page.field("title")
    assert title.get_attribute("aria-required") == "true"
    assert page.find('[data-path="title"] label').text.startswith("Title *")
    assert page.find('[data-path="title"] .help').text == "Any text."
    quality = Select(page.field("quality", "select"))
    assert [option.text for option in quality.options] == ["—", "draft", "final"]
    assert quality.first_selected_option.text == "draft"
    strength = page.field("strength", "input[type=range]")
    assert (strength.get_attribute("min"), strength.get_attribute("max")) == ("0", "1")
    assert page.field("strength").get_attribute("value") == "0.25"
    assert page.find_all('[data-path="count"] input[type=range]') == []  # no bounds: no slider
    assert page.field("count").get_attribute("value") == "3"
    assert not page.field("loud").is_selected()
    assert page.field("tags.0").get_attribute("value") == "first"
    assert page.find('[data-path="crop"] > legend').text == "Crop"
    assert page.field("crop.left").get_attribute("value") == "0"
    assert page.field("crop.keep_aspect").is_selected()
    assert page.field("reference_image_url", "input[type=file]").get_attribute("accept") == "image/*"
    assert page.field("voice", "input[type=file]").get_attribute("accept") == "audio/*"
    images = page.field("image_urls", "input[type=file]")
    assert images.get_attribute("multiple") is not None and images.get_attribute("accept") == "image/*"


def test_a_filled_form_sends_what_it_shows(stack, page, tmp_path):
    page.open(stack.cdn_url, "forms/")
    page.set_value("title", "hello")
    Select(page.field("quality", "select")).select_by_visible_text("final")
    page.field("loud").click()
    page.find('[data-path="tags"] > button').click()  # Add item
    page.set_value("tags.1", "second")
    page.set_value("crop.left", "5")
    pictures = [tmp_path / "one.png", tmp_path / "two.png"]
    for number, picture in enumerate(pictures):
        picture.write_bytes(png(8 + number, 8))
    page.field("image_urls", "input[type=file]").send_keys("\n".join(str(picture) for picture in pictures))
    page.wait_until(lambda: len(page.find_all('[data-path="image_urls"] .dataset img')) == 2)
    page.run()
    page.wait_for_status("Completed")
    page.shot("echoed")

    received = json.loads(page.find("#output-json").get_attribute("textContent"))["received"]
    uploaded = received.pop("image_urls")
    assert received == {
        "title": "hello",
        "quality": "final",
        "strength": 0.25,
        "count": 3,
        "loud": True,
        "tags": ["first", "second"],
        "crop": {"left": 5, "keep_aspect": True},
        "reference_image_url": None,
        "voice": None,
    }
    assert [url.rsplit("/", 1)[1] for url in uploaded] == ["one.png", "two.png"]
    assert all(url.startswith(f"{stack.cdn_url}/files/") for url in uploaded)
    assert "Output (partial)" in page.seen_output_headings()
    assert "received 2 images" in page.find("#run-logs").get_attribute("textContent")


def test_a_file_dropped_on_a_file_field_is_uploaded_and_previewed(stack, page):
    page.open(stack.cdn_url, "forms/")
    zone = page.find('[data-path="reference_image_url"] .drop')
    page.js(
        """const bytes = Uint8Array.from(atob(arguments[1]), (c) => c.charCodeAt(0));
           const transfer = new DataTransfer();
           transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
           arguments[0].dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));""",
        zone,
        base64.b64encode(png(12, 10)).decode(),
    )
    page.wait_until(lambda: page.js("return document.querySelector('.preview img')?.naturalWidth") == 12)
    page.shot("dropped")
    url = page.field("reference_image_url", "input[type=url]").get_attribute("value")
    assert url.startswith(f"{stack.cdn_url}/files/") and url.endswith("/dropped.png")
    assert httpx.get(url).content == png(12, 10)


def test_an_error_in_a_nested_field_is_shown_under_it(stack, page):
    page.open(stack.cdn_url, "forms/")
    page.set_value("title", "hello")
    page.set_value("crop.left", "500")
    page.run()
    page.wait_until(lambda: page.find('[data-path="crop.left"] .error').is_displayed())
    page.shot("nested-error")
    assert "less than or equal to 100" in page.find('[data-path="crop.left"] .error').text


def test_the_code_box_holds_calls_that_work_as_shown(stack, page):
    page.open(stack.cdn_url, "sample/")
    page.set_value("text", "ahoy")
    page.set_value("times", "2")

    curl = page.find("#code-text").get_attribute("textContent").split("\n\n")[0]
    submitted = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True).stdout)
    result = httpx.get(f"{stack.cdn_url}/queue/ferry/sample/requests/{submitted['request_id']}/status/stream")
    assert '"status": "COMPLETED"' in result.text

    page.find("#code-tab-python").click()
    python = page.find("#code-text").get_attribute("textContent")
    environment = {**os.environ, "FERRY_ADDRESS": stack.grpc_address}
    ran = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, env=environment, check=True)
    assert ran.stdout.strip() == "{'text': 'ahoyahoy'}"

    page.find("#code-tab-fal").click()
    assert 'fal_client.subscribe("ferry/sample", arguments={' in page.find("#code-text").text
    page.shot("code")


def test_the_page_works_390_px_wide(stack, page, tmp_path):
    page.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    page.open(stack.cdn_url, "upscaler/")
    assert page.js("return window.innerWidth") == 390
    for link in [link.get_attribute("data-endpoint") for link in page.find_all("[data-endpoint]")]:
        page.open(stack.cdn_url, link)
        assert not page.has_horizontal_scroll(), link
    page.shot("phone-form")

    page.open(stack.cdn_url, "upscaler/")
    upload_png(page, tmp_path, 200, 150)
    page.run()
    page.wait_for_status("Completed")
    image = page.find("figure[data-kind=image] img")
    page.wait_until(lambda: page.js("return arguments[0].naturalWidth", image) == 400)
    page.js("arguments[0].scrollIntoView()", image)
    page.shot("phone-result")
    assert not page.has_horizontal_scroll()
    assert image.size["width"] <= 390  # fitted to the screen, not 400 px wide


def test_an_uploaded_html_file_does_not_run_its_script_on_the_playground_origin(
    stack, page, http_server: HttpFileServer
):
    # The control: the same page served plainly, elsewhere, runs its script in this browser.
    (http_server.root / "marker.html").write_bytes(MARKER_SCRIPT)
    page.driver.get(f"{http_server.base_url}/marker.html")
    page.wait_until(lambda: page.driver.title == "script ran")

    stored = httpx.put(
        f"{stack.cdn_url}/uploads/marker.html", content=MARKER_SCRIPT, headers={"Content-Type": "text/html"}
    )
    stored.raise_for_status()
    url = stored.json()["url"]
    assert url.startswith(f"{stack.cdn_url}/files/")

    page.open(stack.cdn_url, "upscaler/")
    page.js('localStorage.removeItem("script-ran")')
    # Opened from its stored URL, in a frame of the playground (same origin, which its CSP allows)…
    page.js(
        """const frame = document.createElement("iframe"); frame.id = "stored"; frame.src = arguments[0];
           document.body.append(frame);""",
        url,
    )
    assert not ran_within(page, SCRIPT_GRACE_SECONDS)
    # …and as a page of its own.
    page.driver.get(url)
    page.shot("stored-html")
    assert not ran_within(page, SCRIPT_GRACE_SECONDS)
    page.open(stack.cdn_url, "upscaler/")
    page.shot("after")

    assert page.js('return localStorage.getItem("script-ran")') is None


def ran_within(page: Page, seconds: float) -> bool:
    """Whether the marker script shows it ran (the title it sets, or its mark in this origin's storage) within
    `seconds`: the control above shows it within a fraction of that."""
    try:
        page.wait_until(
            lambda: page.driver.title == "script ran" or page.js(STORED_MARK),
            timeout=seconds,
        )
    except TimeoutException:
        return False
    return True
