"""The model every peer serves: Ferry's Upscaler, its own torch code imported, never re-implemented.

`upscale_png` is the handler body of `ferry.inference.apps.upscale.Upscaler.run` after its download:
`load_image` → `upscale_tensor` → `to_pixels` → a png at Pillow's compress_level 1, the level Ferry's
encoder writes by default, so every server does the same work on the same bytes.
"""

from __future__ import annotations

import io
import threading
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from ferry.inference.apps import to_pixels
from ferry.inference.apps.upscale import MAX_OUTPUT_PIXELS, load_image, upscale_tensor

SCALE = 2
SHARPEN = 0.5  # UpscaleInput's default
PNG_LEVEL = 1  # Ferry's encoder default

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what Upscaler.setup picks
# One model call at a time, as the Upscaler's max_concurrency = 1 has Ferry's runner do; the download
# before it and the png encode after it may overlap other requests', as they do in Ferry.
MODEL = threading.Lock()


def upscale_pixels(source: str | Path, scale: int = SCALE):  # -> np.ndarray (H×W×C uint8)
    with MODEL, torch.inference_mode():
        image = load_image(source, DEVICE, max_pixels=MAX_OUTPUT_PIXELS // scale**2)
        return to_pixels(upscale_tensor(image, scale, SHARPEN)).cpu().numpy()


def upscale_png(source: str | Path, scale: int = SCALE) -> bytes:
    """An image file → the png bytes of it upscaled `scale` times and sharpened."""
    buffer = io.BytesIO()
    Image.fromarray(upscale_pixels(source, scale)).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def fetch(url: str, target: Path) -> Path:
    """`url` → a file at `target`, with the standard library: the peers that take a URL have no downloader."""
    with urllib.request.urlopen(url, timeout=30) as response, open(target, "wb") as out:
        while block := response.read(1 << 20):
            out.write(block)
    return target
