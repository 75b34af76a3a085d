"""The Upscaler as a cog Predictor: `python -m cog.server.http` (coglet) serves it.

    COG_PREDICT_TYPE_STUB=cog_predict.py:Predictor COG_MAX_CONCURRENCY=32 PORT=N \\
        python -m cog.server.http --upload-url http://127.0.0.1:M/

coglet downloads the `image` URL into a `cog.Path` before `predict` runs and PUTs the returned
file to `--upload-url` (answering with the URL the upload server gives back), so the output is
stored, as Ferry stores its own. An async `predict` under `@cog.concurrent` is how cog admits more
than one prediction at a time (a sync one answers 409 to a second); the torch work runs in a thread.
"""

import asyncio
import tempfile

from cog import BasePredictor, Input, Path, concurrent
from upscale_model import upscale_png

# cog reads each input's schema from its default: an Input() made once, here.
IMAGE = Input(description="The image to upscale")
SCALE = Input(default=2, ge=1, le=4, description="Output size as a multiple of the input's")


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.out_dir = Path(tempfile.mkdtemp(prefix="cog-upscaled-"))

    @concurrent(max=32)
    async def predict(self, image: Path = IMAGE, scale: int = SCALE) -> Path:
        png = await asyncio.to_thread(upscale_png, image, scale)
        # A name of its own per request: coglet uploads to --upload-url + the file's name.
        with tempfile.NamedTemporaryFile(dir=self.out_dir, suffix=".png", delete=False) as out:
            out.write(png)
        return Path(out.name)
