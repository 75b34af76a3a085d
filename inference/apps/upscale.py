"""Upscaler: bicubic upscaling sharpened with an unsharp mask.

No learned weights — nothing can be downloaded where ferry runs its examples —
so the "model" is classical resampling on the device, the same tensor path a
super-resolution network's output would take: URL in, `Image` out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
from PIL import Image as PILImageModule
from PIL.Image import DecompressionBombError
from pydantic import BaseModel, Field

import ferry
from ferry.errors import InvalidArgument, ResourceExhausted
from ferry.inference.app import endpoint
from ferry.inference.apps import TorchApp, to_pixels
from ferry.inference.context import RequestContext
from ferry.inference.outputs import Encode
from ferry.services.config import EncoderConfig
from ferry.toolkit import Image

# The encoder's default `max_pixels`: a bigger result could be computed but not stored.
MAX_OUTPUT_PIXELS = EncoderConfig.max_pixels


class UpscaleInput(BaseModel):
    image_url: str = Field(description="The image to upscale: an http(s) URL or a data: URI.")
    scale: int = Field(default=2, ge=1, le=4, description="Output size as a multiple of the input's.")
    sharpen: float = Field(default=0.5, ge=0.0, le=2.0, description="Unsharp-mask strength; 0 is plain bicubic.")


class UpscaleOutput(BaseModel):
    image: Annotated[Image, Encode("png", channel_order="last")]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian out to 3 sigma, where what is left is under 0.3 %."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of an N×C×H×W batch alone: two 1-D passes cost 2k, not k², per pixel."""
    channels = batch.shape[1]
    kernel = gaussian_kernel(sigma).to(batch.device, batch.dtype)
    radius = kernel.numel() // 2
    # Replicate, not reflect: reflection needs a side longer than the radius, and a 1-pixel image is valid input.
    padded = F.pad(batch, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def upscale_tensor(image: torch.Tensor, scale: int, sharpen: float) -> torch.Tensor:
    """A C×H×W float image in [0, 1] → C×(H·scale)×(W·scale), sharpened by `sharpen`, in [0, 1]."""
    if image.ndim != 3 or not image.is_floating_point():
        raise ValueError(f"expected a C×H×W float image, got {image.dtype} {list(image.shape)}")
    batch = image.unsqueeze(0)
    if scale != 1:
        batch = F.interpolate(batch, scale_factor=scale, mode="bicubic", align_corners=False)
    if sharpen > 0:
        # Interpolation smears detail across about `scale` output pixels: the mask's radius follows it.
        blurred = gaussian_blur(batch, sigma=0.5 + 0.5 * scale)
        batch = batch + sharpen * (batch - blurred)
    return batch.squeeze(0).clamp(0.0, 1.0)


def load_image(path: str | Path, device: torch.device | str = "cpu", max_pixels: int | None = None) -> torch.Tensor:
    """A file Pillow can read → C×H×W float32 in [0, 1] on `device`: RGB, or RGBA when it has transparency.

    An image over `max_pixels` is refused from its header, before any pixel is decoded.
    """
    try:
        with PILImageModule.open(path) as opened:
            if max_pixels is not None and opened.width * opened.height > max_pixels:
                raise ResourceExhausted(
                    f"{opened.width}×{opened.height} is over the {max_pixels} pixels allowed", reason="TOO_MANY_PIXELS"
                )
            has_alpha = "A" in opened.getbands() or "transparency" in opened.info
            pixels = np.array(opened.convert("RGBA" if has_alpha else "RGB"))
    except DecompressionBombError as error:
        raise ResourceExhausted(str(error), reason="TOO_MANY_PIXELS") from None
    except OSError as error:  # not an image, or a truncated one
        raise InvalidArgument(f"{Path(path).name} cannot be read as an image: {error}", reason="NOT_AN_IMAGE") from None
    return torch.from_numpy(pixels).to(device).permute(2, 0, 1).float().div_(255.0)


class Upscaler(TorchApp):
    app_id = "upscaler"

    @endpoint("/")
    def run(self, input: UpscaleInput, context: RequestContext) -> UpscaleOutput:
        """Upscales the image at image_url (1 to 4 times its size), optionally sharpened, as a png."""
        path = ferry.download_file(input.image_url)  # in a runner: the copy it downloaded before the call
        image = load_image(path, self.device, max_pixels=MAX_OUTPUT_PIXELS // input.scale**2)
        context.raise_if_cancelled()
        context.progress(0, 1, "upscaling")
        with torch.inference_mode():
            upscaled = upscale_tensor(image, input.scale, input.sharpen)
        context.progress(1, 1, "encoding")
        # The tensor, not an encoded Image: the runner encodes it after the handler returns, when the
        # device is already free for the next request (a png of 1024² takes as long as the model here).
        return UpscaleOutput.model_construct(image=to_pixels(upscaled))
