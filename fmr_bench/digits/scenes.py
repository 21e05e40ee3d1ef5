"""Digits drawn on named backgrounds, textures, inks and image qualities.

The spurious-correlation variant of the digits world (``digits-spurious``) and the
captioned digits CLIP (``builtin:digits-clip-captions``) both need digit images whose
non-digit attributes have *names*: "a three on a red background", "in white ink", "with
a striped texture", "blurred". This module holds the vocabulary (:data:`BACKGROUNDS`,
:data:`INKS`, :data:`TEXTURES`, :data:`QUALITIES`) and one renderer,
:func:`render_scenes`, that draws a digit's ink density on such a scene.

The ink density of a digit is recovered from the coloured digits-world images by
normalising their luminance (paper 0, darkest ink 1), as ``digits-shift:style`` does,
so every scene shows the same handwriting as ``digits:train`` / ``digits:test``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .images import gaussian_blur

#: Background colours (RGB in [0, 1]); in ``digits-spurious`` class ``c`` has background ``c``.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.25, 0.20),
    "orange": (1.00, 0.60, 0.15),
    "yellow": (0.95, 0.90, 0.25),
    "green": (0.35, 0.80, 0.30),
    "cyan": (0.30, 0.85, 0.90),
    "blue": (0.35, 0.50, 0.95),
    "purple": (0.70, 0.45, 0.90),
    "pink": (1.00, 0.60, 0.80),
    "brown": (0.70, 0.50, 0.30),
    "grey": (0.65, 0.65, 0.65),
}
#: Ink colours. The captioned CLIP sees every ink whose luminance differs enough from
#: the background's; ``digits-spurious`` always uses black ink.
INKS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.05),
    "white": (0.97, 0.97, 0.97),
    "red": (0.75, 0.05, 0.05),
    "blue": (0.05, 0.10, 0.70),
    "green": (0.05, 0.45, 0.10),
    "yellow": (0.95, 0.90, 0.10),
}
#: Background textures: a pattern that darkens the background colour where it is 1.
TEXTURES = ("plain", "striped", "checked", "dotted")
#: Image qualities (StarFT's "resolution" concept): how the finished image is degraded.
QUALITIES = ("sharp", "blurred", "pixelated", "dark")

#: Minimum luminance gap between ink and background, so that the digit stays legible.
MIN_CONTRAST = 0.3
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def luminance(rgb: tuple[float, float, float] | torch.Tensor) -> float:
    """Rec. 601 luma of one RGB colour in [0, 1]."""
    return float((torch.as_tensor(rgb, dtype=torch.float32) * _LUMA).sum())


def legible_inks(background: str) -> list[str]:
    """Names of the inks that contrast with ``background`` by at least :data:`MIN_CONTRAST`."""
    lb = luminance(BACKGROUNDS[background])
    return [k for k, v in INKS.items() if abs(luminance(v) - lb) >= MIN_CONTRAST]


def ink_density(images: torch.Tensor) -> torch.Tensor:
    """Ink density in [0, 1], (N, 1, H, W), of coloured digit images (uint8 or float).

    The paper (the brightest luminance of an image) maps to 0 and its darkest ink to 1.
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    lum = (x * _LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)
    lo = lum.amin((2, 3), keepdim=True)
    hi = lum.amax((2, 3), keepdim=True)
    return ((hi - lum) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def _patterns(size: int) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return {
        "plain": torch.zeros(size, size),
        "striped": ((yy // 3) % 2).float(),  # horizontal stripes, 3 px
        "checked": (((yy // 4) + (xx // 4)) % 2).float(),  # 4 px checks
        "dotted": (((yy % 6) < 2) & ((xx % 6) < 2)).float(),  # 2 px dots every 6 px
    }




def _degrade(x: torch.Tensor, quality: str) -> torch.Tensor:
    if quality == "blurred":
        return gaussian_blur(x, 1.3)
    if quality == "pixelated":
        small = F.interpolate(x, size=(10, 10), mode="area")
        return F.interpolate(small, size=x.shape[-2:], mode="nearest")
    if quality == "dark":
        return x * 0.4
    return x


def render_scenes(
    density: torch.Tensor,
    backgrounds: list[str],
    inks: list[str] | None = None,
    textures: list[str] | None = None,
    qualities: list[str] | None = None,
    jitter: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw digits on named scenes.

    Args:
        density: ink density in [0, 1], (N, 1, H, W) (see :func:`ink_density`).
        backgrounds: one :data:`BACKGROUNDS` name per image.
        inks: one :data:`INKS` name per image (default black).
        textures: one :data:`TEXTURES` name per image (default plain).
        qualities: one :data:`QUALITIES` name per image (default sharp).
        jitter: optional (N, 2, 3) colour offsets added to background (row 0) and ink
            (row 1), so that images of one scene are not all the same colour.

    Returns:
        Float images in [0, 1], (N, 3, H, W).

    Raises:
        KeyError: an unknown attribute name.
    """
    n, _, h, w = density.shape
    inks = inks or ["black"] * n
    textures = textures or ["plain"] * n
    qualities = qualities or ["sharp"] * n
    bg = torch.tensor([BACKGROUNDS[b] for b in backgrounds], dtype=torch.float32)
    ink = torch.tensor([INKS[k] for k in inks], dtype=torch.float32)
    if jitter is not None:
        bg = (bg + jitter[:, 0]).clamp(0, 1)
        ink = (ink + jitter[:, 1]).clamp(0, 1)
    pats = _patterns(h)
    pattern = torch.stack([pats[t] for t in textures])[:, None]  # (N, 1, H, W)
    paper = bg[:, :, None, None] * (1 - 0.3 * pattern)
    x = paper + (ink[:, :, None, None] - paper) * density
    out = torch.empty_like(x)
    for q in set(qualities):
        idx = torch.tensor([i for i, v in enumerate(qualities) if v == q])
        out[idx] = _degrade(x[idx], q)
    return out.clamp(0, 1)
