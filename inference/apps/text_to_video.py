"""TextToVideo: procedural animation from a prompt.

No weights — nothing can be downloaded where ferry runs its examples — so each
frame is drawn: colour bands drifting across a rotating gradient, with soft
discs gliding on Lissajous paths over it. Every colour, speed and path comes
from the prompt's sha256. Motion is defined in seconds, so a higher `fps`
gives smoother frames of the same animation, not a faster one. Frames are
rendered one at a time on the device, with progress and a cancellation check
between them, into one uint8 clip the encoder turns into an mp4.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field, model_validator

from ferry.inference.app import endpoint
from ferry.inference.apps import GenerationContext, TorchApp, prompt_seed, to_pixels
from ferry.inference.context import RequestContext
from ferry.toolkit import Video

DISCS = 3
# The whole clip is held in memory as uint8 before encoding: 600 frames at 512×512 is 450 MiB.
MAX_CLIP_PIXELS = 600 * 512 * 512


class TextToVideoInput(BaseModel):
    prompt: str = Field(min_length=1, description="What to animate; the same prompt always gives the same clip.")
    num_frames: int = Field(default=48, ge=1, le=600)
    fps: int = Field(default=24, ge=1, le=60)
    width: int = Field(default=256, ge=16, le=1024)
    height: int = Field(default=256, ge=16, le=1024)

    @model_validator(mode="after")
    def clip_fits_in_memory(self) -> TextToVideoInput:
        pixels = self.num_frames * self.width * self.height
        if pixels > MAX_CLIP_PIXELS:
            raise ValueError(f"{self.num_frames} frames of {self.width}×{self.height} is over {MAX_CLIP_PIXELS} pixels")
        return self


class VideoOutput(BaseModel):
    video: Video


class Scene:
    """The prompt's animation at one frame size: every parameter drawn once, on the CPU, so every device agrees."""

    def __init__(self, prompt: str, width: int, height: int, device: torch.device | str = "cpu") -> None:
        draw = torch.Generator().manual_seed(prompt_seed(prompt))
        self.gradient_colours = torch.rand(2, 3, 1, 1, generator=draw).to(device)  # the background's two ends
        self.spin = 0.5 * torch.rand(1, generator=draw).item() - 0.25  # gradient turns, per second
        self.band_frequency = 1.0 + 3.0 * torch.rand(1, generator=draw).item()  # bands across the frame
        self.band_speed = 0.2 + 0.6 * torch.rand(1, generator=draw).item()  # bands drifting past, per second
        self.disc_colours = torch.rand(DISCS, 3, 1, 1, generator=draw).to(device)
        self.disc_radii = (0.06 + 0.12 * torch.rand(DISCS, generator=draw)).tolist()
        self.path_frequencies = 0.1 + 0.5 * torch.rand(DISCS, 2, generator=draw)  # x and y swings per second
        self.path_phases = 2 * math.pi * torch.rand(DISCS, 2, generator=draw)

        # Coordinates over the longer side keep discs round in any aspect ratio.
        side = max(width, height)
        self.x = torch.arange(width, device=device, dtype=torch.float32).div_(side).view(1, -1)
        self.y = torch.arange(height, device=device, dtype=torch.float32).div_(side).view(-1, 1)
        self.extent = torch.tensor([width / side, height / side])
        self.edge_sharpness = float(side)  # a disc's edge blends over about one pixel

    def render(self, seconds: float) -> torch.Tensor:
        """The 3×H×W frame in [0, 1] at `seconds` into the clip."""
        x, y = self.x, self.y
        angle = 2 * math.pi * self.spin * seconds
        along = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
        mix = 0.5 + 0.5 * torch.sin(2 * math.pi * (self.band_frequency * along - self.band_speed * seconds))
        start, end = self.gradient_colours
        frame: torch.Tensor = start + (end - start) * mix

        # Centres swing over the middle 70 % of the frame; computed on the CPU: six numbers are not worth a kernel.
        swing = torch.sin(2 * math.pi * self.path_frequencies * seconds + self.path_phases)
        centres = (self.extent * (0.5 + 0.35 * swing)).tolist()
        for (cx, cy), radius, colour in zip(centres, self.disc_radii, self.disc_colours, strict=True):
            coverage = torch.sigmoid((radius - torch.hypot(x - cx, y - cy)) * self.edge_sharpness)
            frame = frame + (colour - frame) * coverage
        return frame


def generate_video(
    prompt: str,
    num_frames: int = 48,
    fps: int = 24,
    width: int = 256,
    height: int = 256,
    context: GenerationContext | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Render a T×H×W×3 uint8 clip; `context` hears each frame and may stop the loop between frames."""
    scene = Scene(prompt, width, height, device)
    # uint8 from the start: a float32 clip would take four times the memory.
    clip = torch.empty(num_frames, height, width, 3, dtype=torch.uint8, device=device)
    for index in range(num_frames):
        if context is not None:
            context.raise_if_cancelled()
        clip[index] = to_pixels(scene.render(index / fps))
        if context is not None:
            context.progress(index + 1, num_frames)
    return clip


class TextToVideo(TorchApp):
    app_id = "text-to-video"

    @endpoint("/")
    def run(self, input: TextToVideoInput, context: RequestContext) -> VideoOutput:
        """Renders a short clip from the prompt, frame by frame with progress, as an mp4."""
        with torch.inference_mode():
            clip = generate_video(
                input.prompt, input.num_frames, input.fps, input.width, input.height, context, self.device
            )
        return VideoOutput(video=Video.from_tensor(clip, fps=input.fps, channel_order="last"))
