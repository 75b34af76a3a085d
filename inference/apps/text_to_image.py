"""TextToImage: a procedural stand-in for a diffusion model.

No weights — nothing can be downloaded where ferry runs its examples — so the
"network" is an oracle that knows a procedural target: colour bands and a glow
whose palette and geometry come from the prompt's sha256, their phases from
the seed. Sampling is real DDIM arithmetic from pure noise, with a denoiser
that is less sure of itself at high noise: few steps leave grain, many steps
converge. What the runner sees is what a real model gives it: a loop of steps
with progress and cancellation between them, then a tensor to encode.
"""

from __future__ import annotations

import math
import secrets

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's own spelling)
from pydantic import BaseModel, Field

from ferry.inference.app import endpoint
from ferry.inference.apps import GenerationContext, TorchApp, prompt_seed, to_pixels
from ferry.inference.context import RequestContext
from ferry.toolkit import Image

# Seeds a person can type into a form and a JavaScript number holds exactly.
MAX_SEED = 2**32 - 1
# How much of the noise the denoiser leaves as texture, scaled by how noisy its input is.
GRAIN = 0.35


class TextToImageInput(BaseModel):
    prompt: str = Field(min_length=1, description="What to draw; the same prompt always gives the same composition.")
    width: int = Field(default=512, ge=16, le=2048)
    height: int = Field(default=512, ge=16, le=2048)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Same prompt and seed, same image; omitted: a random seed."
    )
    steps: int = Field(default=8, ge=1, le=200, description="Denoising steps: more is smoother.")


class ImageOutput(BaseModel):
    image: Image
    seed: int = Field(description="The seed used: pass it back to get this image again.")


def procedural_target(
    prompt: str, seed: int, width: int, height: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The 3×H×W image in [0, 1] the sampler converges to."""
    # Parameters are drawn on the CPU so every device renders the same picture.
    layout = torch.Generator().manual_seed(prompt_seed(prompt))
    palette = torch.rand(3, 3, generator=layout)  # three colours, RGB
    frequencies = 1.0 + 5.0 * torch.rand(3, generator=layout)  # cycles across the longer side
    angles = math.pi * torch.rand(3, generator=layout)
    sharpness = 2.0 + 6.0 * torch.rand(1, generator=layout)
    glow_centre = torch.rand(2, generator=layout)
    glow_radius = 0.15 + 0.3 * torch.rand(1, generator=layout)
    phases = 2 * math.pi * torch.rand(3, generator=torch.Generator().manual_seed(prompt_seed(prompt, seed)))

    # Coordinates over the longer side keep circles round and bands straight in any aspect ratio.
    side = max(width, height)
    y = torch.arange(height, device=device, dtype=torch.float32).div_(side).view(-1, 1)
    x = torch.arange(width, device=device, dtype=torch.float32).div_(side).view(1, -1)
    angles, frequencies, phases = (t.to(device).view(-1, 1, 1) for t in (angles, frequencies, phases))
    along = x * torch.cos(angles) + y * torch.sin(angles)  # 3×H×W: position along each band's direction
    waves = torch.sin(2 * math.pi * frequencies * along + phases)
    weights = torch.softmax(sharpness.to(device) * waves, dim=0)
    colour = torch.einsum("kc,khw->chw", palette.to(device), weights)

    glow_centre = glow_centre.to(device)
    distance = torch.hypot(x - glow_centre[0], y - glow_centre[1])
    glow = torch.exp(-((distance / glow_radius.to(device)) ** 2))
    return (colour + 0.35 * glow * (1.0 - colour)).clamp(0.0, 1.0)


def noise_schedule(steps: int) -> list[float]:
    """ᾱ for each of `steps` + 1 levels: ≈0 (pure noise) first, 1 (clean) last; the cosine schedule."""
    return [math.cos(math.pi / 2 * (1 - level / steps)) ** 2 for level in range(steps + 1)]


def generate_image(
    prompt: str,
    seed: int,
    width: int = 512,
    height: int = 512,
    steps: int = 8,
    context: GenerationContext | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sample a 3×H×W image in [0, 1]; `context` hears each step and may stop the loop between steps."""
    target = procedural_target(prompt, seed, width, height, device).mul(2.0).sub(1.0)  # the sampler works in [-1, 1]
    # Drawn on the CPU like the target's parameters, from a stream of its own (salt ~seed, not seed).
    noise = torch.randn(3, height, width, generator=torch.Generator().manual_seed(prompt_seed(prompt, ~seed)))
    latent = noise.to(device)
    alpha_bars = noise_schedule(steps)
    for step in range(steps):
        if context is not None:
            context.raise_if_cancelled()
        now, after = alpha_bars[step], alpha_bars[step + 1]
        predicted_noise = (latent - math.sqrt(now) * target) / math.sqrt(1.0 - now)
        # A trained network's noise estimate has unit variance; without this the oracle's grain, read back
        # as noise at the next level, compounds step after step until it drowns the image.
        predicted_noise = predicted_noise / predicted_noise.std()
        # The oracle's guess keeps some smoothed noise, more while the input is noisier: that is the grain.
        texture = F.avg_pool2d(predicted_noise.unsqueeze(0), 3, stride=1, padding=1).squeeze(0)
        predicted_clean = target + GRAIN * math.sqrt(1.0 - now) * texture
        latent = math.sqrt(after) * predicted_clean + math.sqrt(1.0 - after) * predicted_noise  # DDIM, η = 0
        if context is not None:
            context.progress(step + 1, steps)
    return latent.add(1.0).div(2.0).clamp(0.0, 1.0)


class TextToImage(TorchApp):
    app_id = "text-to-image"

    @endpoint("/")
    def run(self, input: TextToImageInput, context: RequestContext) -> ImageOutput:
        """Paints an image from the prompt and a seed (the same seed, the same image)."""
        seed = input.seed if input.seed is not None else secrets.randbelow(MAX_SEED + 1)
        with torch.inference_mode():
            image = generate_image(input.prompt, seed, input.width, input.height, input.steps, context, self.device)
        return ImageOutput(image=Image.from_tensor(to_pixels(image), format="png", channel_order="last"), seed=seed)
