"""``vae:ID_OR_FOLDER`` — a diffusers autoencoder as a continuous-latent generator.

The analogue of the VQGAN loop (the paper's Table 3 lists a VAE, Efficient-VDVAE, among
the generator choices) with the autoencoders diffusers ships:

* ``AutoencoderKL``: latent = the posterior mean of the encoder (no sampling, so the
  start is deterministic); ``decode`` is the decoder;
* ``VQModel``: latent = the continuous encoder output ``h`` (after ``quant_conv``,
  before quantisation); ``decode`` quantises to the nearest code with a
  straight-through gradient, like the VQGAN generator.

Pixels are scaled from our [0, 1] to the models' [-1, 1] and back. Options:
``resolution`` (side length images are resized to; default the config's
``sample_size``), ``subfolder`` (the model's sub-folder of a pipeline folder).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import SpecError
from ..specs import Spec, parse_options
from . import VAE_OPTIONS, _diffusers
from .base import Generator
from .diffusion import resize_to


class DiffusersAutoencoder(Generator):
    """A frozen ``AutoencoderKL`` or ``VQModel``; ``encode``/``decode`` in pixels [0, 1].

    Args:
        model: the diffusers autoencoder.
        source: how records name it.
        resolution: side length; defaults to the config's ``sample_size``.
    """

    name = "vae"

    def __init__(self, model: torch.nn.Module, *, source: str = "", resolution: int | None = None) -> None:
        super().__init__()
        self.model, self.source = model, source
        self.kind = type(model).__name__
        if self.kind not in ("AutoencoderKL", "VQModel"):
            raise SpecError(f"vae generator needs an AutoencoderKL or a VQModel (got {self.kind})")
        size = model.config.sample_size
        self.resolution = int(resolution or (size if isinstance(size, int) else size[0]))

    @property
    def quantised(self) -> bool:
        return self.kind == "VQModel"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_to(x, self.resolution) * 2 - 1
        if self.quantised:
            return self.model.encode(x).latents
        return self.model.encode(x).latent_dist.mean

    def final_latent(self, z: torch.Tensor) -> torch.Tensor:
        if not self.quantised:
            return z
        zq, _, _ = self.model.quantize(z)
        return zq.detach()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.quantised:  # diffusers' quantiser passes the gradient straight through
            x = self.model.decode(z, force_not_quantize=False).sample
        else:
            x = self.model.decode(z).sample
        return ((x + 1) / 2).clamp(0, 1)

    def settings(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"name": self.name, "source": self.source, "model": self.kind, "resolution": self.resolution,
                "latent_channels": int(cfg.latent_channels),
                "block_out_channels": list(cfg.block_out_channels)}


def build(spec: Spec, default: str, seed: int = 0) -> DiffusersAutoencoder:
    """Builder of ``vae:ID_OR_FOLDER`` specs (registered in ``GENERATORS``)."""
    resolution = parse_options(spec, VAE_OPTIONS, what="generator")["resolution"]
    model, source = _diffusers.load_model(spec, "vae", ("AutoencoderKL", "VQModel"))
    return DiffusersAutoencoder(model, source=source.name, resolution=resolution)


def weight_refs(spec: Spec, default: str):
    return _diffusers.weight_refs(spec, "vae")
