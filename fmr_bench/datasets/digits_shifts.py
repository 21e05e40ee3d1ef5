"""Shifted test sets of the digits world, so every static evaluator runs offline.

All are deterministic transforms of ``fmr_bench.digits.images.load_digits_split("test")``
(360 images), computed in float64-free torch ops with fixed seeds:

- ``digits-shift:NAME`` for NAME in :data:`SHIFTS` — each a distribution shift with the
  digits' labels (``rotated`` ±40°, ``inverted`` colours, ``noisy`` Gaussian noise,
  ``blurred``, ``small`` 55 % scale, ``dark`` 35 % brightness, ``style`` a held-out
  saturated colour style never seen in training).
- ``digits-shift:mixed`` — clean + every shift, with group labels (the shift) and
  ImageNet-X-style top-factor annotations (the factor each shift stands for).
- ``digits-ood:noise`` / ``digits-ood:textures`` — images with no digit (OOD detection).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..digits.images import gaussian_blur
from ..errors import SpecError
from ..registry import DATASETS
from .base import TensorImages
from .digits import DIGITS_WORLD

SHIFTS = ("rotated", "inverted", "noisy", "blurred", "small", "dark", "style")
#: The ImageNet-X factor each shift stands for (``digits-shift:mixed`` annotations).
SHIFT_FACTORS = {"rotated": "pose", "inverted": "color", "noisy": "texture", "blurred": "shape",
                 "small": "smaller", "dark": "darker", "style": "style"}
OOD_KINDS = ("noise", "textures")
SEED = 4


def _test_split() -> tuple[torch.Tensor, torch.Tensor]:
    from ..digits.images import load_digits_split

    images, labels = load_digits_split("test")
    return images.float() / 255.0, labels


def _paper(x: torch.Tensor) -> torch.Tensor:
    """Per-image paper colour: the mean of the four corner pixels, (N, 3, 1, 1)."""
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]], -1)
    return corners.mean(-1)[:, :, None, None]


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    paper = _paper(x)
    t = degrees * math.pi / 180
    cos, sin = torch.cos(t), torch.sin(t)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(t)], -1),
                         torch.stack([sin, cos, torch.zeros_like(t)], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # rotate (x - paper) with zero padding, so the uncovered corners get the paper colour
    return (F.grid_sample(x - paper, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + paper)




def apply_shift(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the shift ``name`` to images ``x`` (N, 3, 32, 32) in [0, 1]; deterministic."""
    n = x.shape[0]
    g = torch.Generator().manual_seed(SEED)
    if name == "rotated":
        sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
        out = _rotate(x, 40.0 * sign)
    elif name == "inverted":
        out = 1.0 - x
    elif name == "noisy":
        out = x + 0.25 * torch.randn(x.shape, generator=g)
    elif name == "blurred":
        out = gaussian_blur(x, 1.6)
    elif name == "small":
        paper = _paper(x)
        small = F.interpolate(x, size=(18, 18), mode="bilinear", align_corners=False, antialias=True)
        out = paper.expand_as(x).clone()
        out[:, :, 7:25, 7:25] = small
    elif name == "dark":
        out = x * 0.35
    elif name == "style":
        # Ink density from luminance, re-coloured with saturated paper/ink pairs far from the
        # training colours (light paper, dark ink).
        lum = x.mean(1, keepdim=True)
        lo = lum.amin((2, 3), keepdim=True)
        hi = lum.amax((2, 3), keepdim=True)
        density = ((hi - lum) / (hi - lo).clamp_min(1e-6))
        hues = torch.rand(n, generator=g) * 2 * math.pi
        paper = torch.stack([0.5 + 0.45 * torch.cos(hues + k * 2 * math.pi / 3) for k in range(3)], 1)
        ink = torch.stack([0.5 + 0.45 * torch.cos(hues + math.pi + k * 2 * math.pi / 3) for k in range(3)], 1)
        out = paper[:, :, None, None] + (ink - paper)[:, :, None, None] * density
    else:
        raise SpecError(f"unknown digits shift {name!r}; use one of {', '.join(SHIFTS)} or mixed")
    return out.clamp(0, 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 255).to(torch.uint8)


@functools.lru_cache(maxsize=len(SHIFTS) + 1)
def shifted_test_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of the test split under shift ``name`` (``clean`` for none); cached."""
    x, labels = _test_split()
    return _to_uint8(x if name == "clean" else apply_shift(x, name)), labels


class DigitsShift(TensorImages):
    """A shifted copy of the digits test split (uint8, like the clean split)."""

    transform_id = "digits-shift-v1"


@DATASETS.register("digits-shift", help=f"digits-shift:NAME — shifted digits test set ({', '.join(SHIFTS)}, mixed)", options={})
def build_shift(spec) -> DigitsShift:
    from ..digits import CLASS_NAMES

    name = spec.ident or "mixed"
    if name == "mixed":
        parts = [(s, shifted_test_split(s)[0]) for s in ("clean", *SHIFTS)]
        labels = shifted_test_split("clean")[1]
        images = torch.cat([p for _, p in parts])
        ids = [f"{s}/{i:04d}" for s, _ in parts for i in range(len(labels))]
        ds = DigitsShift(images, labels.tolist() * len(parts), CLASS_NAMES, spec=str(spec), world=DIGITS_WORLD,
                         ids=ids, label_space="digits")
        ds.groups = [k for k in range(len(parts)) for _ in range(len(labels))]
        ds.group_names = [s for s, _ in parts]
        ds.prompt = None  # the zero-shot model's own templates
        ds.factor_annotations = _factor_table(ids, [s for s, _ in parts], len(labels), labels.tolist())
        return ds
    if name not in SHIFTS:
        raise SpecError(f"unknown digits shift {name!r}; use one of {', '.join(SHIFTS)} or mixed, e.g. digits-shift:rotated")
    images, labels = shifted_test_split(name)
    return DigitsShift(images.clone(), labels.tolist(), CLASS_NAMES, spec=str(spec),
                       world=DIGITS_WORLD, ids=[f"{name}/{i:04d}" for i in range(len(labels))], label_space="digits")


def _factor_table(ids: list[str], parts: list[str], n: int, labels: list[int]):
    """One row per shifted image: ``file_name``, ``class`` and one 0/1 column per ImageNet-X factor."""
    import pandas as pd

    from .factors import FACTORS

    rows = []
    for k, part in enumerate(parts):
        if part == "clean":
            continue
        for i in range(n):
            row = {"file_name": ids[k * n + i], "class": labels[i], **{f: 0 for f in FACTORS}}
            row[SHIFT_FACTORS[part]] = 1
            rows.append(row)
    return pd.DataFrame(rows)


@DATASETS.register("digits-ood", help="digits-ood:noise|textures — digit-free images for OOD detection", options={})
def build_ood(spec) -> DigitsShift:
    kind = spec.ident or "noise"
    n = 360
    g = torch.Generator().manual_seed(SEED + 1)
    if kind == "noise":
        x = gaussian_blur(torch.rand(n, 3, 32, 32, generator=g), 0.8)
    elif kind == "textures":
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        freq = 0.2 + 0.8 * torch.rand(n, 1, 1, generator=g)
        angle = torch.rand(n, 1, 1, generator=g) * math.pi
        wave = torch.sin(freq * (xx * torch.cos(angle) + yy * torch.sin(angle)))
        checker = torch.sign(torch.sin(freq * xx) * torch.sin(freq * yy))
        pattern = torch.where((torch.arange(n) % 2 == 0)[:, None, None], wave, checker)
        c1, c2 = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        x = c1 + (c2 - c1) * (pattern[:, None] + 1) / 2
    else:
        raise SpecError(f"unknown digits OOD set {kind!r}; use digits-ood:noise or digits-ood:textures")
    ds = DigitsShift(_to_uint8(x.clamp(0, 1)), [-1] * n, ["ood"], spec=str(spec), world=DIGITS_WORLD,
                     ids=[f"ood-{kind}/{i:04d}" for i in range(n)])
    ds.ood_name = f"digits-{kind}"
    return ds
