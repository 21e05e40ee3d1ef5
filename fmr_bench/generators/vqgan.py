"""VQGAN generator built from taming-transformers' building blocks.

Loads the official Lightning checkpoint layout (``state_dict`` with ``encoder.*``,
``decoder.*``, ``quantize.*``, ``quant_conv.*``, ``post_quant_conv.*``; ``loss.*`` keys
are ignored) with ``torch.load(weights_only=True)``, and safetensors files holding the
same keys. The model itself is taming's ``Encoder``/``Decoder``/``VectorQuantizer2``
(Esser et al., 2021); only the forward glue is ours.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingDependencyError, WeightsError, first_line
from ..runtime import exact_fp32
from ..weights import load_state_strict, safe_torch_load
from .base import Generator

# Keys of the official checkpoint that belong to the model (the discriminator and
# perceptual loss live under ``loss.*`` and are not needed).
MODEL_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def _taming():
    try:
        from taming.modules.diffusionmodules import model as blocks
        from taming.modules.vqvae.quantize import VectorQuantizer2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"the VQGAN generator needs taming-transformers ({e}); "
            "run: pip install taming-transformers-rom1504 einops"
        ) from None
    # taming's swish is ``x * torch.sigmoid(x)``: three memory-bound passes forward and
    # more backward over every 224-px activation. ``F.silu`` is the same function in one
    # fused kernel each way (about 5 % of a CPU step). The blocks look the name up at call time.
    blocks.nonlinearity = torch.nn.functional.silu
    return blocks.Encoder, blocks.Decoder, VectorQuantizer2


class VQGAN(Generator):
    """VQGAN as generator: ``encode`` gives the pre-quantisation latent, ``decode``
    quantises it to the nearest code (straight-through gradient) and decodes.

    Args:
        ddconfig: taming's encoder/decoder config (``ch``, ``ch_mult``, ``z_channels``...).
        n_embed: codebook size.
        embed_dim: code dimension.
    """

    name = "vqgan"

    def __init__(self, ddconfig: dict[str, Any], n_embed: int, embed_dim: int, *, card: str = "") -> None:
        super().__init__()
        Encoder, Decoder, VectorQuantizer2 = _taming()
        self.ddconfig = dict(ddconfig)
        self.n_embed, self.embed_dim, self.card = n_embed, embed_dim, card
        self.resolution = int(ddconfig.get("resolution", 256))
        with contextlib.redirect_stdout(io.StringIO()):  # taming prints the latent shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    # -- the generator interface -------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x * 2 - 1))

    def code_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for every latent position, (N, h, w)."""
        codebook = self.quantize.embedding.weight.float()
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
        # Always in fp32, also under bf16 autocast: the choice among 16384 codes is
        # discrete, and bf16 distances pick other codes than the fp32 loop would.
        with torch.autocast(z.device.type, enabled=False), exact_fp32():
            # ||z||^2 is constant per row, so argmin over ||e||^2 - 2 z.e is enough.
            dist = (codebook * codebook).sum(1) - 2 * flat @ codebook.t()
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def final_latent(self, z: torch.Tensor) -> torch.Tensor:
        idx = self.code_indices(z.detach())
        return self.quantize.embedding(idx).permute(0, 3, 1, 2).to(z.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        zq = self.final_latent(z)
        zq = z + (zq - z).detach()  # straight-through: d zq / d z = I
        x = self.decoder(self.post_quant_conv(zq))
        return ((x + 1) / 2).clamp(0, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "card": self.card, "n_embed": self.n_embed,
                "embed_dim": self.embed_dim, "resolution": self.resolution}

    # -- weights -------------------------------------------------------------------
    def load_weights(self, path: str | Path) -> VQGAN:
        """Load an official Lightning checkpoint or a safetensors file of model keys."""
        state = read_vqgan_state(path)
        load_state_strict(self, state, what=f"VQGAN weights {path} do not fit the card's architecture",
                          fix="pass the card that matches the checkpoint")
        return self


def read_vqgan_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Model tensors of a VQGAN checkpoint, without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"VQGAN weights file {path} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = safe_torch_load(path)
    except Exception as e:  # corrupt file, foreign pickle
        raise WeightsError(
            f"cannot read VQGAN weights {path} safely ({first_line(e)}); re-download it or convert it "
            "to safetensors holding the state_dict"
        ) from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    state = {k: v for k, v in raw.items() if k.startswith(MODEL_PREFIXES)}
    if not state:
        raise WeightsError(f"{path} holds no VQGAN keys (encoder.*, decoder.*, quantize.*); is it a VQGAN checkpoint?")
    return state
