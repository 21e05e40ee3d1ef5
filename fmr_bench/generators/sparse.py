"""``sparse-vqgan[:MASK]`` — a generator that moves only the latent dims of a fitted mask.

The sparse VQGAN of the FMR paper (§3.2.1, App. I): an L1 logistic regression that tells
encoder latents of clean images from the final latents of perturbed ones selects a few
"style" dims (``fmr fit-sparse``, :mod:`fmr_bench.studies.fit_sparse`); the generator steps only
those and keeps every other dim at the encoder's value.

The mask acts on the gradient: :meth:`SparseGenerator.decode` feeds the decoder
``where(mask, z, z.detach())``, which has the value of ``z`` and a gradient that is
exactly zero outside the mask. Every latent optimiser then leaves those dims exactly
unchanged (sgd: ``+ lr * 0``; sign: ``sign(0) = 0``; adam: its moments stay 0, so the
update is ``0 / (0 + eps) = 0``), so the loop, the batched slots and the reference loop
need no change. The cost of a step is that of the dense VQGAN: the decoder still
decodes, and back-propagates through, the whole latent.

A mask is a card (JSON, ``kind: "sparse-vqgan"``) plus a ``.npy`` file of uint8 with
the latent shape (C, H, W), both in the top-level ``generators/`` folder or anywhere
``--out`` of ``fmr fit-sparse`` put them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SettingsError, SpecError, WeightsError, first_line
from .base import Generator
from .cards import cards_dir, load_card

KIND = "sparse-vqgan"
FIT_HINT = "fmr fit-sparse --model MODEL --data DATA:train --generator {generator}"


class SparseGenerator(Generator):
    """A latent generator whose steps only move the dims where ``mask`` is true.

    Args:
        base: the dense generator (a VQGAN); encode, quantisation and decoder are its own.
        mask: bool tensor of the latent shape (C, H, W) without the batch dimension.
        card: name of the mask card, for records.
        info: what the records should say about the mask (sparsity, sha256, fit data).
    """

    name = KIND

    def __init__(self, base: Generator, mask: torch.Tensor, *, card: str = "", info: dict[str, Any] | None = None):
        super().__init__()
        self.base = base
        self.register_buffer("mask", mask.bool().clone())
        self.card, self.info = card, dict(info or {})
        self.resolution = base.resolution

    def _check(self, z: torch.Tensor) -> None:
        if tuple(z.shape[1:]) != tuple(self.mask.shape):
            raise SettingsError(
                f"sparse mask {self.card or ''} has shape {tuple(self.mask.shape)} but the generator's latent is "
                f"{tuple(z.shape[1:])}; fit a mask for this generator and resolution: "
                + FIT_HINT.format(generator=self.info.get("generator", "vqgan:CARD")))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        # Value of z everywhere; gradient only inside the mask (see the module docstring).
        return self.base.decode(torch.where(self.mask, z, z.detach()))

    def final_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.base.final_latent(z)

    def post_step(self, z: torch.Tensor, sample_ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.base.post_step(z, sample_ids, steps)

    def settings(self) -> dict[str, Any]:
        return {**self.base.settings(), "name": self.name, "base": self.base.name, "mask_card": self.card,
                "mask_dims": int(self.mask.sum()), "latent_dims": int(self.mask.numel()), **self.info}


# -- mask cards -------------------------------------------------------------------------
def mask_path(card: dict) -> Path:
    """The mask file of a card, relative to the card's folder."""
    return Path(card["_path"]).parent / card["mask"]["file"]


def read_mask(card: dict) -> np.ndarray:
    """The card's mask as a bool array of its ``latent_shape``; checks sha256 and shape."""
    path = mask_path(card)
    fix = "re-run " + FIT_HINT.format(generator=card.get("generator", "vqgan:CARD"))
    if not path.is_file():
        raise WeightsError(f"mask file {path} of card {card['name']} does not exist; {fix}")
    expected = card["mask"].get("sha256")
    if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        raise WeightsError(f"{path} does not match the sha256 of card {card['name']}; {fix}")
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise WeightsError(f"cannot read mask {path} ({first_line(e)}); {fix}") from None
    shape = tuple(card.get("latent_shape") or mask.shape)
    if mask.shape != shape:
        raise SettingsError(f"mask {path} has shape {mask.shape} but card {card['name']} says {shape}; {fix}")
    return mask.astype(bool)


def sparse_cards() -> list[dict]:
    """All mask cards in the generators folder."""
    out = []
    for path in sorted(cards_dir().glob(f"{KIND}-*.json")):
        card = json.loads(path.read_text())
        if card.get("kind") == KIND:
            card["_path"] = str(path)
            out.append(card)
    return out


def find_mask_card(ident: str, world_generator_card: str | None) -> dict:
    """The card ``ident`` names, or the only mask fitted for the world's generator card."""
    if ident:
        card = load_card(ident, KIND)
        if card.get("kind") != KIND or "mask" not in card:
            raise SpecError(f"{card['_path']} is a {card.get('kind', '?')} card, not a sparse mask; pass a "
                            f"sparse-vqgan card or fit one with " + FIT_HINT.format(generator="vqgan:CARD"))
        return card
    matches = [c for c in sparse_cards() if world_generator_card and c.get("generator_card") == world_generator_card]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SpecError(f"no sparse mask fitted for generator {world_generator_card or '?'}; fit one with "
                        + FIT_HINT.format(generator=world_generator_card or "vqgan:CARD")
                        + " and pass --generator sparse-vqgan:PATH/TO/CARD.json")
    names = ", ".join(c["name"].removeprefix(KIND + "-") for c in matches)
    raise SpecError(f"several sparse masks fit generator {world_generator_card}: {names}; "
                    "pick one, e.g. --generator sparse-vqgan:" + matches[0]["name"].removeprefix(KIND + "-"))


def check_card_fits(card: dict, world_generator_card: str | None, world_generator: str) -> None:
    """A mask fitted for another generator (another dataset world) is an error, not a silent mismatch."""
    fitted = card.get("generator_card")
    if world_generator_card and fitted and fitted != world_generator_card:
        raise SettingsError(
            f"sparse mask {card['name']} was fitted for generator {card.get('generator')} on {card.get('dataset')}, "
            f"but this dataset world uses {world_generator}; fit a mask for it: "
            + FIT_HINT.format(generator=world_generator))


def mask_help() -> str:
    """The masks that ship (for ``fmr list generators``); never fails."""
    try:
        names = [c["name"].removeprefix(KIND + "-") for c in sparse_cards()]
    except (OSError, ValueError, KeyError, SpecError):  # pragma: no cover - a broken card folder
        names = []
    return "masks: " + (", ".join(names) if names else "none (fmr fit-sparse)")
