"""Masked-image counterfactuals (seed 000 §3.2): which patches to mask, what to fill them with.

Masks are boolean patch grids (N, gh, gw), True = masked. Fills work on unnormalised
pixels in [0, 1], so a patch copied from another image is exactly that image's patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SettingsError
from .settings import FILLS, MASKS, check_mask_settings  # noqa: F401  (re-exported)

def patch_mask(kind: str, cam: torch.Tensor | None, *, threshold: float = 0.3, rate: float = 0.5,
               grid: tuple[int, int] | None = None, n: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, gh, gw) bool: ``object`` = CAM > t, ``context`` = CAM ≤ t, ``random`` = each patch with prob. r.

    ``random`` needs no CAM: give ``grid`` and ``n`` instead.
    """
    check_mask_settings(kind, threshold, rate, "none")
    if kind == "random":
        if cam is not None:
            n, grid = cam.shape[0], tuple(cam.shape[1:])
        if n is None or grid is None:
            raise SettingsError("a random mask needs a grid and a batch size (or a CAM to take them from)")
        return torch.rand((n, *grid), generator=generator, device="cpu").lt(rate).to(
            cam.device if cam is not None else "cpu")
    if cam is None:
        raise SettingsError(f"an {kind} mask needs a CAM")
    return cam > threshold if kind == "object" else cam <= threshold


def pixel_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Patch grid (N, gh, gw) -> pixel mask (N, 1, H, W) by nearest-neighbour upsampling."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest").bool()


def other_index(n: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """For each image i (dim 0 of ``shape``), random indices j ≠ i, uniform over the others."""
    if n < 2:
        raise SettingsError("filling masked patches from other images needs batches of at least 2 images; "
                            "raise --batch-size or use --fill none")
    offset = torch.randint(1, n, shape, generator=generator)
    rows = torch.arange(n).view(-1, *([1] * (len(shape) - 1)))
    return (rows + offset) % n


def fill(x: torch.Tensor, mask: torch.Tensor, how: str, *, generator: torch.Generator | None = None,
         value: float = 0.0) -> torch.Tensor:
    """The counterfactual image: masked patches of ``x`` replaced.

    Args:
        x: pixels in [0, 1], (N, C, H, W).
        mask: (N, gh, gw) bool, True = replace.
        how: ``none`` (the constant ``value``, black by default), ``single`` (all patches of image i
            from one other image of the batch), ``multi`` (each patch from an independently drawn
            other image; never the image itself).
    """
    if how not in FILLS:
        raise SettingsError(f"unknown fill {how!r}; use one of {', '.join(FILLS)}")
    n, _, h, w = x.shape
    pm = pixel_mask(mask, (h, w)).to(x.device)
    if how == "none":
        source = torch.full_like(x, value)
    elif how == "single":
        j = other_index(n, (n,), generator).to(x.device)
        source = x[j]
    else:
        j = other_index(n, tuple(mask.shape), generator)  # (N, gh, gw)
        jp = F.interpolate(j[:, None].float(), size=(h, w), mode="nearest").long().to(x.device)  # (N, 1, H, W)
        source = _take(x, jp)
    return torch.where(pm, source, x)


def _take(x: torch.Tensor, jp: torch.Tensor) -> torch.Tensor:
    """out[i, c, y, x] = x[jp[i, 0, y, x], c, y, x]."""
    n, c, h, w = x.shape
    flat = x.permute(1, 0, 2, 3).reshape(c, n, h * w)  # (C, N, HW)
    idx = jp.view(n, h * w)
    pix = torch.arange(h * w, device=x.device).expand(n, -1)
    out = flat[:, idx, pix]  # (C, N, HW)
    return out.view(c, n, h, w).permute(1, 0, 2, 3)
