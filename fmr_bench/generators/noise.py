"""Dependency-free generators that work directly in pixel space.

The paper names simple transformations as valid choices of g (§3.1). ``pixel`` steps
the pixels themselves along the loss gradient; ``noise`` adds seeded Gaussian noise
after every step as well. Both are cheap baselines and make the protocol testable
without any generative model.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .base import Generator


class PixelGenerator(Generator):
    """Latent = pixels; decode clamps to [0, 1]."""

    name = "pixel"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.clamp(0, 1)


class NoiseGenerator(PixelGenerator):
    """Pixel steps plus Gaussian noise of standard deviation ``sigma`` after each step.

    The noise of a sample depends only on (seed, sample id, step), so batched and
    one-image runs draw the same noise.
    """

    name = "noise"

    def __init__(self, sigma: float = 0.02, seed: int = 0) -> None:
        super().__init__()
        self.sigma, self.seed = float(sigma), int(seed)

    def post_step(self, z: torch.Tensor, sample_ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(z)
        for row, (sid, step) in enumerate(zip(sample_ids.tolist(), steps.tolist())):
            key = hashlib.blake2b(f"{self.seed}/{sid}/{step}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
            noise[row] = torch.randn(z.shape[1:], generator=g).to(z)
        return z + self.sigma * noise

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "seed": self.seed}
