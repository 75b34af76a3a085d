"""The Upscaler as a BentoML service: JSON {"image_url", "scale"} in, a png file (`Path`) out.

    bentoml serve bentoml_service:Upscaler --port N

BentoML's defaults: one worker, a sync API run in a thread pool of `threads` = 1. BentoML's file
inputs are uploads (multipart) of bytes the client holds; a URL is fetched by the handler, into
BentoML's per-request temp dir. The returned `Path` is sent as the response body.
"""

from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from upscale_model import fetch, upscale_png


@bentoml.service
class Upscaler:
    @bentoml.api
    def upscale(
        self, image_url: str, ctx: bentoml.Context, scale: int = 2
    ) -> Annotated[Path, ContentType("image/png")]:
        directory = Path(ctx.temp_dir)
        source = fetch(image_url, directory / "input")
        out = directory / "upscaled.png"
        out.write_bytes(upscale_png(source, scale))
        return out
