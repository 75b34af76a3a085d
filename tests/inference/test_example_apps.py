"""The built-in example apps: their generators are pure, deterministic, shaped and ranged as documented,
follow the prompt, report progress and stop when cancelled; their handlers turn a request into stored media."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
from PIL import Image as PILImage
from pydantic import ValidationError

import ferry
from ferry import datauri
from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.inference.app import describe
from ferry.inference.apps import prompt_seed, to_pixels
from ferry.inference.apps.text_to_audio import (
    NOTE_SECONDS,
    PEAK,
    TextToAudio,
    TextToAudioInput,
    note_frequencies,
    synthesize,
)
from ferry.inference.apps.text_to_image import TextToImage, TextToImageInput, generate_image, noise_schedule
from ferry.inference.apps.text_to_video import TextToVideo, TextToVideoInput, generate_video
from ferry.inference.apps.upscale import UpscaleInput, Upscaler, load_image, upscale_tensor
from ferry.inference.context import RequestCancelled, RequestContext
from ferry.testing import StackProcess


class Stopped(Exception):
    pass


class StopAfter:
    """A request context whose `raise_if_cancelled` passes `checks` times, then raises; it records progress."""

    def __init__(self, checks: int | None = None) -> None:
        self.checks_left = checks
        self.reports: list[tuple[float, float]] = []

    def progress(self, current: float, total: float = 0, message: str = "") -> None:
        self.reports.append((current, total))

    def raise_if_cancelled(self) -> None:
        if self.checks_left == 0:
            raise Stopped
        if self.checks_left is not None:
            self.checks_left -= 1


def high_frequency_energy(image: torch.Tensor) -> float:
    """Mean distance of a C×H×W image from its 3×3 local mean: grain and sharp edges."""
    return (
        (image - F.avg_pool2d(image.unsqueeze(0), 3, stride=1, padding=1, count_include_pad=False)[0])
        .abs()
        .mean()
        .item()
    )


# -- shared helpers -----------------------------------------------------------------------


def test_a_prompt_always_gives_the_same_seed_and_a_salt_gives_another():
    assert prompt_seed("a red fox") == prompt_seed("a red fox")
    assert prompt_seed("a red fox") != prompt_seed("a red fox.")
    assert prompt_seed("a red fox", 1) != prompt_seed("a red fox", 2) != prompt_seed("a red fox")
    assert 0 <= prompt_seed("a red fox") < 2**64


def test_to_pixels_rounds_clamps_and_puts_channels_last():
    image = torch.tensor([[[0.0, 0.5]], [[1.0, 1.5]], [[-0.2, 0.2]]])  # 3 channels × 1 row × 2 columns
    pixels = to_pixels(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 2, 3)
    assert pixels.tolist() == [[[0, 255, 0], [128, 255, 51]]]


# -- upscaler ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [3, 4])
def test_upscaling_multiplies_each_side_by_the_scale_and_keeps_the_channels(scale, channels):
    image = torch.rand(channels, 7, 5, generator=torch.Generator().manual_seed(0))
    assert upscale_tensor(image, scale, sharpen=0.5).shape == (channels, 7 * scale, 5 * scale)


def test_upscaling_stays_in_the_unit_range_even_at_full_sharpening():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    upscaled = upscale_tensor(image, 4, sharpen=2.0)
    assert upscaled.min() >= 0.0 and upscaled.max() <= 1.0


def test_upscaling_is_deterministic():
    image = torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(2))
    assert torch.equal(upscale_tensor(image, 3, 1.0), upscale_tensor(image, 3, 1.0))


def test_a_flat_image_stays_flat_at_any_sharpening():
    upscaled = upscale_tensor(torch.full((3, 9, 9), 0.3), 2, sharpen=2.0)
    assert torch.allclose(upscaled, torch.full_like(upscaled, 0.3), atol=1e-5)


def test_a_one_pixel_image_can_be_upscaled():
    assert upscale_tensor(torch.full((3, 1, 1), 0.7), 4, sharpen=1.0).shape == (3, 4, 4)


def test_scale_one_without_sharpening_returns_the_image_unchanged():
    image = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(upscale_tensor(image, 1, sharpen=0.0), image)


def test_sharpening_steepens_edges():
    edge = torch.zeros(3, 16, 16)
    edge[:, :, 8:] = 0.8  # dark left half, bright right half
    plain, sharpened = upscale_tensor(edge, 2, sharpen=0.0), upscale_tensor(edge, 2, sharpen=1.0)
    steepest = lambda image: image.diff(dim=2).abs().max().item()  # noqa: E731
    assert steepest(sharpened) > steepest(plain) * 1.2


def test_upscaling_refuses_what_is_not_a_float_image():
    with pytest.raises(ValueError, match="C×H×W float"):
        upscale_tensor(torch.zeros(8, 8), 2, 0.5)
    with pytest.raises(ValueError, match="C×H×W float"):
        upscale_tensor(torch.zeros(3, 8, 8, dtype=torch.uint8), 2, 0.5)


def test_loading_an_image_gives_channels_first_floats(tmp_path: Path):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    PILImage.fromarray(pixels).save(tmp_path / "small.png")
    loaded = load_image(tmp_path / "small.png")
    assert loaded.shape == (3, 4, 6) and loaded.dtype == torch.float32
    assert torch.equal(loaded.permute(1, 2, 0).mul(255).round().to(torch.uint8), torch.from_numpy(pixels))


def test_loading_keeps_transparency_and_makes_grayscale_rgb(tmp_path: Path):
    PILImage.new("RGBA", (5, 3), (10, 20, 30, 40)).save(tmp_path / "clear.png")
    PILImage.new("L", (5, 3), 90).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "clear.png").shape == (4, 3, 5)
    assert load_image(tmp_path / "gray.png").shape == (3, 3, 5)


def test_loading_refuses_a_file_that_is_not_an_image(tmp_path: Path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InvalidArgument, match="cannot be read as an image"):
        load_image(tmp_path / "notes.png")


def test_loading_refuses_an_image_over_the_pixel_limit_from_its_header(tmp_path: Path):
    PILImage.new("RGB", (20, 10)).save(tmp_path / "wide.png")
    with pytest.raises(ResourceExhausted, match="20×10"):
        load_image(tmp_path / "wide.png", max_pixels=199)
    assert load_image(tmp_path / "wide.png", max_pixels=200).shape == (3, 10, 20)


def test_upscale_input_bounds_scale_and_sharpening():
    assert UpscaleInput(image_url="data:,").model_dump() == {"image_url": "data:,", "scale": 2, "sharpen": 0.5}
    for wrong in ({"scale": 0}, {"scale": 5}, {"sharpen": -0.1}, {"sharpen": 2.5}):
        with pytest.raises(ValidationError):
            UpscaleInput(image_url="data:,", **wrong)


# -- text to image ----------------------------------------------------------------------


def test_an_image_has_the_asked_size_with_values_in_the_unit_range():
    image = generate_image("a lighthouse at dusk", seed=7, width=48, height=32, steps=4)
    assert image.shape == (3, 32, 48) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_the_same_prompt_and_seed_give_the_same_image():
    first = generate_image("a lighthouse at dusk", seed=7, width=64, height=64)
    assert torch.equal(first, generate_image("a lighthouse at dusk", seed=7, width=64, height=64))


def test_another_prompt_or_seed_gives_another_image():
    image = generate_image("a lighthouse at dusk", seed=7, width=64, height=64)
    other_prompt = generate_image("a lighthouse at dawn", seed=7, width=64, height=64)
    other_seed = generate_image("a lighthouse at dusk", seed=8, width=64, height=64)
    assert (image - other_prompt).abs().mean() > 0.05
    assert (image - other_seed).abs().mean() > 0.05


def test_more_steps_leave_less_grain():
    grain = [high_frequency_energy(generate_image("grain", seed=1, width=96, height=96, steps=n)) for n in (1, 8, 50)]
    assert grain[0] > grain[1] > grain[2]


def test_the_noise_schedule_runs_from_pure_noise_to_clean():
    schedule = noise_schedule(8)
    assert len(schedule) == 9 and schedule[0] < 1e-6 and schedule[-1] == 1.0
    assert schedule == sorted(schedule)


def test_image_generation_reports_each_step():
    context = StopAfter()
    generate_image("steps", seed=0, width=32, height=32, steps=5, context=context)
    assert context.reports == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_a_cancelled_image_stops_at_the_step_it_was_cancelled():
    context = StopAfter(checks=3)
    with pytest.raises(Stopped):
        generate_image("cancel me", seed=0, width=32, height=32, steps=50, context=context)
    assert context.reports == [(1, 50), (2, 50), (3, 50)]


def test_text_to_image_input_needs_only_a_prompt():
    assert TextToImageInput(prompt="a cat").model_dump() == {
        "prompt": "a cat",
        "width": 512,
        "height": 512,
        "seed": None,
        "steps": 8,
    }
    for wrong in ({"prompt": ""}, {"steps": 0}, {"steps": 201}, {"seed": -1}, {"width": 4096}):
        with pytest.raises(ValidationError):
            TextToImageInput(**{"prompt": "a cat", **wrong})


# -- text to video ----------------------------------------------------------------------


def test_a_clip_is_frames_by_height_by_width_by_rgb_bytes():
    clip = generate_video("waves", num_frames=5, fps=10, width=40, height=24)
    assert clip.shape == (5, 24, 40, 3) and clip.dtype == torch.uint8


def test_the_same_prompt_gives_the_same_clip_and_another_prompt_another():
    clip = generate_video("waves", num_frames=4, width=32, height=32)
    assert torch.equal(clip, generate_video("waves", num_frames=4, width=32, height=32))
    other = generate_video("ripples", num_frames=4, width=32, height=32)
    assert (clip.float() - other.float()).abs().mean() > 10


def test_frames_move():
    clip = generate_video("motion", num_frames=3, fps=4, width=64, height=64).float()
    assert (clip[1] - clip[0]).abs().mean() > 1 and (clip[2] - clip[1]).abs().mean() > 1


def test_fps_changes_smoothness_not_speed():
    # Frame 2 at 24 fps and frame 1 at 12 fps are both 1/12 s into the same animation.
    smooth = generate_video("timing", num_frames=3, fps=24, width=32, height=32)
    coarse = generate_video("timing", num_frames=2, fps=12, width=32, height=32)
    assert torch.equal(smooth[2], coarse[1])


def test_video_generation_reports_each_frame_and_stops_when_cancelled():
    finished = StopAfter()
    generate_video("frames", num_frames=3, width=16, height=16, context=finished)
    assert finished.reports == [(1, 3), (2, 3), (3, 3)]
    cancelled = StopAfter(checks=2)
    with pytest.raises(Stopped):
        generate_video("frames", num_frames=100, width=16, height=16, context=cancelled)
    assert cancelled.reports == [(1, 100), (2, 100)]


def test_text_to_video_input_refuses_a_clip_too_big_to_hold():
    assert TextToVideoInput(prompt="a cat").num_frames == 48
    assert TextToVideoInput(prompt="a cat", num_frames=600, width=512, height=512).num_frames == 600  # at the limit
    with pytest.raises(ValidationError, match="over"):
        TextToVideoInput(prompt="a cat", num_frames=600, width=1024, height=512)


# -- text to audio ----------------------------------------------------------------------


def test_audio_is_mono_float_samples_for_the_whole_duration_peaking_below_full_scale():
    samples = synthesize("la la", duration_seconds=0.5, sample_rate=16000)
    assert samples.shape == (8000,) and samples.dtype == torch.float32
    assert samples.abs().max().item() == pytest.approx(PEAK, rel=1e-5)


def test_the_same_prompt_gives_the_same_sound_and_another_prompt_another():
    sound = synthesize("hello", duration_seconds=0.6)
    assert torch.equal(sound, synthesize("hello", duration_seconds=0.6))
    assert not torch.allclose(sound, synthesize("hellp", duration_seconds=0.6), atol=1e-3)


def test_each_character_is_a_pentatonic_note_and_whitespace_a_rest():
    notes = note_frequencies("ab c")
    assert notes[2] is None and all(isinstance(note, float) for note in notes[:2] + notes[3:])
    for note in notes[:2] + notes[3:]:
        semitones = round(12 * math.log2(note / 220.0))
        assert semitones % 12 in (0, 2, 4, 7, 9) and 0 <= semitones < 36
    assert synthesize("   ", duration_seconds=0.3).abs().max() == 0


def test_notes_fade_in_and_out_so_the_clip_has_no_clicks():
    samples = synthesize("xyz", duration_seconds=0.5, sample_rate=8000)
    assert samples[0] == 0 and abs(samples[-1].item()) < 0.01
    note_length = round(NOTE_SECONDS * 8000)
    assert abs(samples[note_length - 1].item()) < 0.01  # the end of the first note


def test_audio_synthesis_reports_each_note_and_stops_when_cancelled():
    finished = StopAfter()
    synthesize("abc", duration_seconds=0.5, sample_rate=8000, context=finished)  # 0.2 s notes: 3, the last cut short
    assert finished.reports == [(1, 3), (2, 3), (3, 3)]
    cancelled = StopAfter(checks=1)
    with pytest.raises(Stopped):
        synthesize("abc", duration_seconds=10, sample_rate=8000, context=cancelled)
    assert cancelled.reports == [(1, 50)]


def test_text_to_audio_input_bounds_duration_and_rate():
    assert TextToAudioInput(prompt="a").model_dump() == {"prompt": "a", "duration_seconds": 2.0, "sample_rate": 24000}
    for wrong in ({"duration_seconds": 0.05}, {"duration_seconds": 31}, {"sample_rate": 4000}):
        with pytest.raises(ValidationError):
            TextToAudioInput(**{"prompt": "a", **wrong})


# -- the apps in the framework, and their handlers against a real stack ---------------------------


@pytest.mark.parametrize(
    ("app_class", "app_id", "input_name", "output_name"),
    [
        (Upscaler, "upscaler", "UpscaleInput", "UpscaleOutput"),
        (TextToImage, "text-to-image", "TextToImageInput", "ImageOutput"),
        (TextToVideo, "text-to-video", "TextToVideoInput", "VideoOutput"),
        (TextToAudio, "text-to-audio", "TextToAudioInput", "AudioOutput"),
    ],
)
def test_each_app_is_a_valid_app_with_one_default_endpoint(app_class, app_id, input_name, output_name):
    spec = describe(app_class)
    assert (spec.app_id, spec.machine_type) == (app_id, "GPU")
    (endpoint,) = spec.endpoints.values()
    assert endpoint.path == "/" and endpoint.takes_context and not endpoint.is_async
    assert (endpoint.input_model.__name__, endpoint.output_model.__name__) == (input_name, output_name)


def test_a_request_cancelled_before_it_starts_encodes_nothing():
    app = TextToImage()
    app.setup()
    context = recording_context()[0]
    context.cancel()
    with pytest.raises(RequestCancelled):
        app.run(TextToImageInput(prompt="never drawn"), context)


def recording_context() -> tuple[RequestContext, list[tuple[float, float]]]:
    reports: list[tuple[float, float]] = []
    context = RequestContext(
        "test-request",
        on_progress=lambda current, total, message: reports.append((current, total)),
        on_log=lambda message, level: None,
        on_partial=lambda output: None,
    )
    return context, reports


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[StackProcess]:
    upscaler = "ferry.inference.apps.upscale:Upscaler"
    with StackProcess(["--data-dir", str(tmp_path_factory.mktemp("apps-data")), "--app", upscaler]) as running:
        yield running


@pytest.fixture
def handlers_reach(stack, monkeypatch) -> None:
    """Handlers download and encode through `ferry.default_client()`: point it at the stack."""
    monkeypatch.setenv("FERRY_ADDRESS", stack.grpc_address)


def run_app(app_class, payload):
    app = app_class()
    app.setup()
    context, reports = recording_context()
    output = app.run(payload, context)
    return output, reports


def test_the_upscaler_served_by_the_runner_stores_exactly_the_upscaled_pixels(stack):
    source = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    with stack.client() as client:
        output = client.run("upscaler", {"image_url": datauri.encode_image(source, "png"), "scale": 3})
    image = ferry.Image.model_validate(output["image"])
    assert image.content_type == "image/png" and (image.width, image.height) == (60, 36)
    expected = to_pixels(upscale_tensor(torch.from_numpy(np.array(source)).permute(2, 0, 1).float() / 255, 3, 0.5))
    assert np.array_equal(np.asarray(image.to_pil()), expected.numpy()), "png is lossless: the model's pixels, exactly"


@pytest.mark.usefixtures("handlers_reach")
def test_text_to_image_returns_the_seed_that_reproduces_its_image():
    first, reports = run_app(TextToImage, TextToImageInput(prompt="a red fox", width=64, height=48, steps=3))
    assert (first.image.width, first.image.height) == (64, 48) and reports == [(1, 3), (2, 3), (3, 3)]
    again, _ = run_app(TextToImage, TextToImageInput(prompt="a red fox", width=64, height=48, steps=3, seed=first.seed))
    assert np.array_equal(np.asarray(again.image.to_pil()), np.asarray(first.image.to_pil()))


@pytest.mark.usefixtures("handlers_reach")
def test_text_to_video_stores_an_mp4_of_the_asked_frames():
    output, reports = run_app(TextToVideo, TextToVideoInput(prompt="waves", num_frames=6, fps=12, width=64, height=48))
    video = output.video
    assert video.content_type == "video/mp4"
    assert (video.frame_count, video.fps, video.width, video.height) == (6, 12, 64, 48)
    assert len(reports) == 6


@pytest.mark.usefixtures("handlers_reach")
def test_text_to_audio_stores_a_wav_of_the_asked_duration():
    output, _ = run_app(TextToAudio, TextToAudioInput(prompt="do re mi", duration_seconds=0.5, sample_rate=8000))
    audio = output.audio
    assert audio.content_type == "audio/wav"
    assert (audio.sample_rate, audio.channels, audio.sample_count) == (8000, 1, 4000)
