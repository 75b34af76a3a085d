"""An app for the runner's tests: echo, a slow cancellable job with progress, a failure, and an image."""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel

import ferry.errors
from ferry.inference import App, RequestContext, endpoint
from ferry.toolkit import Image


class EchoInput(BaseModel):
    text: str
    times: int = 1


class EchoOutput(BaseModel):
    text: str


class SlowInput(BaseModel):
    steps: int = 50
    step_seconds: float = 0.05


class SlowOutput(BaseModel):
    finished_steps: int


class ImageInput(BaseModel):
    size: int = 16


class ImageOutput(BaseModel):
    image: Image


class SampleApp(App):
    app_id = "sample"
    machine_type = "GPU"  # one at a time: requests queue

    @endpoint("/")
    def echo(self, input: EchoInput) -> EchoOutput:
        """Echoes the text, repeated.

        The whole docstring is the endpoint's description."""
        return EchoOutput(text=input.text * input.times)

    @endpoint("/slow")
    def slow(self, input: SlowInput, context: RequestContext) -> SlowOutput:
        for step in range(input.steps):
            context.raise_if_cancelled()
            context.progress(step + 1, input.steps)
            context.log(f"step {step + 1}")
            time.sleep(input.step_seconds)
        return SlowOutput(finished_steps=input.steps)

    @endpoint("/fail")
    def fail(self, input: EchoInput) -> EchoOutput:
        raise RuntimeError(f"model exploded on {input.text!r}")

    @endpoint("/refuse")
    def refuse(self, input: EchoInput) -> EchoOutput:
        raise ferry.errors.InvalidArgument(f"{input.text!r} is not a word this model knows", reason="UNKNOWN_WORD")

    @endpoint("/image")
    def image(self, input: ImageInput) -> ImageOutput:
        return ImageOutput(image=Image.from_tensor(np.full((input.size, input.size, 3), 200, np.uint8)))

    @endpoint("/async")
    async def shout(self, input: EchoInput) -> EchoOutput:
        return EchoOutput(text=input.text.upper())
