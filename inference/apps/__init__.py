"""Built-in example apps: real torch work, no downloaded weights.

Nothing can be fetched from a model hub where ferry's examples and CI run, so
every "model" here is procedural or a tiny deterministic computation. They
exercise the runner the way real models do: they load on the device
(`cuda` when there is one, else `cpu`), report progress, stop when cancelled
and return media through the toolkit types.

| module | app | app_id | returns |
| --- | --- | --- | --- |
| `upscale` | `Upscaler` | `upscaler` | bicubic upscale + unsharp mask of `image_url` → `Image` |
| `text_to_image` | `TextToImage` | `text-to-image` | a procedural "diffusion" sample → `Image` + seed |
| `text_to_video` | `TextToVideo` | `text-to-video` | animated gradient and shapes → `Video` (mp4) |
| `text_to_audio` | `TextToAudio` | `text-to-audio` | additive synth, one note per character → `Audio` (wav) |

Each module keeps its generator a pure function of its inputs (plus a
`GenerationContext` for progress and cancellation) beside the App that wraps it;
the apps share `TorchApp`, which picks their device.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import torch

from ferry.inference.app import App


class GenerationContext(Protocol):
    """What a generator needs from a request: `ferry.inference.context.RequestContext` is one."""

    def progress(self, current: int, total: int = 0, message: str = "") -> None: ...

    def raise_if_cancelled(self) -> None: ...


class TorchApp(App):
    """A GPU app whose `setup` picks `self.device`: `cuda` when the machine has one, else the CPU, so every
    example also runs where there is no GPU (CI, `make demo` on a laptop)."""

    machine_type = "GPU"

    def setup(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prompt_seed(prompt: str, salt: int = 0) -> int:
    """A 64-bit seed from sha256 of `salt` and `prompt`: the same text always draws the same numbers."""
    # The NUL keeps (1, "2x") and (12, "x") apart.
    digest = hashlib.sha256(f"{salt}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def to_pixels(image: torch.Tensor) -> torch.Tensor:
    """C×H×W floats in [0, 1] → H×W×C uint8, on the same device: a quarter of the bytes float32 would send."""
    return image.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0)
