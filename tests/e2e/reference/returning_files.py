"""server-side-files.md, "Returning Files from Endpoints": as written; only the imports differ.

(`load_model` is the example's own placeholder: here a tiny pipeline that draws a gradient.)
"""

from types import SimpleNamespace

from PIL import Image as PILImage

import ferry.inference as fal  # was: import fal
from ferry.toolkit import Image  # was: from fal.toolkit import Image


def load_model():
    def pipe(prompt: str) -> SimpleNamespace:
        picture = PILImage.linear_gradient("L").resize((64, 48)).convert("RGB")
        return SimpleNamespace(images=[picture])

    return pipe


class MyModel(fal.App):
    machine_type = "GPU-A100"

    def setup(self):
        self.pipe = load_model()

    @fal.endpoint("/")
    def generate(self, prompt: str) -> dict:
        pil_image = self.pipe(prompt).images[0]
        return {"image": Image.from_pil(pil_image)}
