"""The generator interface g of the FMR protocol.

A generator maps pixels to a latent (``encode``) and a latent back to pixels
(``decode``, differentiable). The protocol steps the latent along the gradient of the
evaluated model's loss; the generator's weights are frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Generator(nn.Module):
    """Base class: pixels in [0, 1], shape (N, 3, H, W)."""

    #: Short name used in records and spec strings.
    name: str = "generator"
    #: Side length (pixels) the generator works at; datasets are resized to it.
    resolution: int | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent of ``x`` (the continuous encoder output, before any quantisation)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] for latent ``z``; differentiable with respect to ``z``."""
        raise NotImplementedError

    def final_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The latent the decoder actually consumes (quantised for a VQGAN)."""
        return z

    def post_step(self, z: torch.Tensor, sample_ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Hook after each optimiser step (stochastic generators add noise here)."""
        return z

    #: True for generators that make their own steps (:meth:`steer`) instead of the latent
    #: optimiser following the gradient through :meth:`decode` (diffusion with guidance).
    steers: bool = False

    def steer(self, z: torch.Tensor, loss_fn, sample_ids: torch.Tensor, steps: torch.Tensor,
              labels: torch.Tensor | None = None) -> torch.Tensor:
        """One budget step of a self-steering generator: the next latent for rows ``z``.

        ``loss_fn(pixels) -> per-sample loss`` is the evaluated model's loss (to be
        increased), differentiable with respect to the pixels; ``steps`` is the 1-based
        step number of each row; ``labels`` the rows' true classes in the dataset's label
        space (a class-conditional generator may condition on them). Only called when
        :attr:`steers` is True.
        """
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What is needed to reproduce this generator, for result records."""
        return {"name": self.name}

    def freeze(self) -> "Generator":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self
