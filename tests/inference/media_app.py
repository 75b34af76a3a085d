"""Apps for the runner's media, deadline and health tests.

`MediaApp` reports what its handlers saw (downloaded inputs) and leaves raw
tensors in its output fields for the runner to encode. `DeadlineApp` has a
request time limit. `ProbedApp`'s health check fails while the file named by
FERRY_TEST_UNHEALTHY_FLAG exists.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel

import ferry
from ferry.inference import App, Encode, HealthCheck, RequestContext, endpoint
from ferry.toolkit import Audio, Image, Video


class InspectInput(BaseModel):
    image_url: str
    extra_urls: list[str] = []
    mask_url: str | None = None


class InspectOutput(BaseModel):
    paths: dict[str, list[str]]
    sizes: dict[str, list[int]]
    # `ferry.download_file(image_url)` inside the handler returned the runner's copy.
    sdk_reuses_runner_copy: bool


class Nothing(BaseModel):
    pass


class TensorOutputs(BaseModel):
    image: Image
    preview: Annotated[Image, Encode("jpeg", quality=80)]
    audio: Annotated[Audio, Encode(sample_rate=8000)]
    frames: list[Image]
    clip: Annotated[Video, Encode(fps=8)] | None = None
    # Built by the handler itself with the toolkit.
    made_here: Image | None = None


class ImageOnly(BaseModel):
    image: Image


class AudioOnly(BaseModel):
    audio: Audio


class Steps(BaseModel):
    steps: int = 1


class EncodeLoop(BaseModel):
    counter_file: str
    rounds: int = 500


class MediaApp(App):
    app_id = "media"
    machine_type = "GPU"  # one slot: a stuck request would block everything behind it

    @endpoint("/inspect")
    def inspect(self, input: InspectInput, context: RequestContext) -> InspectOutput:
        files = context.input_files
        paths = {
            name: [str(p) for p in (value if isinstance(value, list) else [value])] for name, value in files.items()
        }
        sizes = {name: [Path(p).stat().st_size for p in group] for name, group in paths.items()}
        reused = ferry.download_file(input.image_url) == files["image_url"]
        return InspectOutput(paths=paths, sizes=sizes, sdk_reuses_runner_copy=reused)

    @endpoint("/tensors")
    def tensors(self, input: Steps) -> TensorOutputs:
        gradient = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (24, 1, 3))
        return TensorOutputs.model_construct(
            image=gradient,
            preview=gradient,
            audio=np.sin(np.linspace(0, 2 * np.pi * 440, 8000, dtype=np.float32)) * 0.5,
            frames=np.stack([gradient, 255 - gradient]),
            clip=np.zeros((4, 16, 16, 3), np.uint8),
            made_here=Image.from_tensor(gradient),
        )

    @endpoint("/wrong-shape")
    def wrong_shape(self, input: Nothing) -> ImageOnly:
        return {"image": np.zeros((2, 3, 4, 5, 6), np.uint8)}  # type: ignore[return-value]

    @endpoint("/no-sample-rate")
    def no_sample_rate(self, input: Nothing) -> AudioOnly:
        return {"audio": np.zeros(100, np.float32)}  # type: ignore[return-value]

    @endpoint("/hang")
    def hang(self, input: Nothing, context: RequestContext) -> Nothing:
        while not context.cancelled:  # a model stuck until someone gives up on it
            time.sleep(0.01)
        return Nothing()

    @endpoint("/hang-async")
    async def hang_async(self, input: Nothing) -> Nothing:
        await asyncio.sleep(3600)
        return Nothing()

    @endpoint("/encode-loop")
    def encode_loop(self, input: EncodeLoop) -> Steps:
        for done in range(input.rounds):  # never polls its context: only its media calls can stop it
            Image.from_tensor(np.zeros((8, 8, 3), np.uint8), channel_order="last")
            Path(input.counter_file).write_text(str(done + 1))
        return Steps(steps=input.rounds)

    @endpoint("/")
    def echo(self, input: Steps) -> Steps:
        return input


class DeadlineApp(App):
    app_id = "deadline"
    request_timeout_seconds = 0.5

    @endpoint("/")
    async def run(self, input: Steps) -> Steps:
        await asyncio.sleep(input.steps)
        return input


class ProbedApp(App):
    app_id = "probed"

    @endpoint("/")
    def run(self, input: Steps) -> Steps:
        return input

    @endpoint("/health", health_check=HealthCheck(interval_seconds=0.2, timeout_seconds=1, failure_threshold=2))
    def health(self, input: Nothing) -> Nothing:
        flag = os.environ.get("FERRY_TEST_UNHEALTHY_FLAG")
        if flag and Path(flag).exists():
            raise RuntimeError("the model lost its GPU")
        return Nothing()


__all__ = ["DeadlineApp", "MediaApp", "ProbedApp"]
