"""The digits data set of the digits world, and the augmentations used to train on it.

The images are scikit-learn's bundled handwritten digits (1797 images of 8x8 pixels,
intensities 0..16), split once into train and test (stratified, 20 % test, seed 0, so
360 test images), upscaled to 32x32 with bilinear interpolation and coloured: every
image gets its own ink and paper colour, drawn from a generator seeded by the image's
index in the full data set. The colours are the "style" a generator can change while
the digit (the content) stays.

Everything up to the final rounding is exact in float64 (the interpolation weights are
multiples of 1/8 and the colours are drawn by numpy's PCG64), so the uint8 images are
the same on every machine.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
COLOUR_SEED = 20240
_UPSCALE = 4  # 8 px -> 32 px


def _bilinear_matrix(n_in: int, factor: int) -> np.ndarray:
    """Interpolation matrix (n_in * factor, n_in) of bilinear upscaling.

    Uses the half-pixel convention of ``F.interpolate(mode="bilinear",
    align_corners=False)``: output pixel ``i`` samples the input at
    ``(i + 0.5) / factor - 0.5``, clamped to the border.
    """
    n_out = n_in * factor
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        src = max((i + 0.5) / factor - 0.5, 0.0)
        lo = min(math.floor(src), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        w = src - lo
        m[i, lo] += 1.0 - w
        m[i, hi] += w
    return m


def _colours(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Ink and paper colour (RGB in [0, 1]) of the image with this data set index."""
    rng = np.random.default_rng([COLOUR_SEED, index])
    paper = rng.uniform(0.72, 1.0, size=3)
    ink = rng.uniform(0.0, 0.38, size=3)
    return ink, paper


@lru_cache(maxsize=1)
def _all_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    raw = digits.images.astype(np.float64) / 16.0  # (1797, 8, 8), ink density in [0, 1]
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    up = _bilinear_matrix(8, _UPSCALE)
    # Row then column interpolation; each product has at most two non-zero terms, so
    # the result does not depend on the summation order of the BLAS in use.
    density = np.stack([up @ img @ up.T for img in raw])  # (N, 32, 32)
    images = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    for i in range(len(labels)):
        ink, paper = _colours(i)
        rgb = paper[:, None, None] + (ink - paper)[:, None, None] * density[i][None]
        images[i] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return images, labels, np.sort(train_idx), np.sort(test_idx)


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split of the digits data set.

    Args:
        split: ``"train"`` (1437 images) or ``"test"`` (360 images).

    Returns:
        ``(images, labels)``: uint8 images of shape (N, 3, 32, 32) and int64 labels in
        0..9, ordered by their index in scikit-learn's data set.

    Raises:
        ValueError: ``split`` is not one of ``"train"``, ``"test"``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid splits: {', '.join(SPLITS)}")
    images, labels, train_idx, test_idx = _all_images()
    idx = train_idx if split == "train" else test_idx
    return torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy())


# -- augmentation -------------------------------------------------------------------------


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur every image with its own isotropic Gaussian (5x5 kernel, depthwise)."""
    n, c, h, w = x.shape
    r = torch.arange(-2, 3, dtype=x.dtype)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = k1[:, :, None] * k1[:, None, :]  # (n, 5, 5)
    weight = k2.repeat_interleave(c, 0)[:, None]  # (n*c, 1, 5, 5)
    out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate"), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def augment(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Heavy random augmentation of a batch of digit images.

    Applies, per image and with its own random parameters (ranges and probabilities as
    at ``strength=1``): an affine warp (rotation up to 25 degrees, scale 0.75-1.2, shear,
    translation up to 4 px, padded with the image's own paper colour), colour changes
    (contrast, per-channel gain and offset, channel permutation p=0.5, greyscale p=0.15,
    inversion p=0.2), Gaussian blur (p=0.3) and Gaussian noise (p=0.5).

    Args:
        x: float images in [0, 1], shape (N, 3, H, W).
        generator: source of all randomness; a seeded ``torch.Generator`` makes the
            result repeatable.
        strength: scales the geometric and photometric ranges and, up to 1, the
            probabilities: 0 returns ``x`` unchanged, 0.15-0.3 is a light variant, 1.0 the
            heavy default.

    Returns:
        Augmented images in [0, 1], same shape as ``x``.
    """
    # the phases draw from ``generator`` in this order; the order fixes the result of a seed
    x = _warp(x, generator, strength)
    x = _recolour(x, generator, strength)
    return _degrade(x, generator, strength)


def _warp(x: torch.Tensor, g: torch.Generator, s: float) -> torch.Tensor:
    """Random affine warp (rotation, scale, shear, translation), padded with the paper colour."""
    n, c, h, w = x.shape
    # Geometry: an inverse affine map in normalised coordinates for grid_sample.
    angle = _uniform(n, -25, 25, g) * s * math.pi / 180
    scale = 1 + _uniform(n, -0.25, 0.2, g) * s
    shear = _uniform(n, -0.25, 0.25, g) * s
    tx, ty = (_uniform(n, -1, 1, g) * 4 * s * 2 / w for _ in range(2))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (-sin + shear * cos) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = (cos + shear * sin) / scale
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    # Pad with each image's own paper colour (its border mean) so that warps do not
    # leave black corners that would be a shortcut.
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2).mean(2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    ones = torch.ones(n, 1, h, w)
    warped = F.grid_sample(torch.cat([x - border[:, :, None, None], ones], 1), grid,
                           mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped[:, :c] + border[:, :, None, None]


def _recolour(x: torch.Tensor, g: torch.Generator, s: float) -> torch.Tensor:
    """Random contrast, channel gain and offset, channel permutation, greyscale and inversion."""
    n, c = x.shape[:2]
    # Colour: contrast around the image mean, then per-channel gain and offset.
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = 1 + _uniform(n, -0.5, 0.3, g)[:, None, None, None] * s
    x = (x - mean) * contrast + mean
    gain = 1 + (torch.rand(n, c, 1, 1, generator=g) - 0.5) * 0.6 * s
    offset = (torch.rand(n, c, 1, 1, generator=g) - 0.5) * 0.4 * s
    x = x * gain + offset
    perm = torch.stack([torch.randperm(c, generator=g) for _ in range(n)])
    keep = torch.rand(n, generator=g) >= 0.5 * min(s, 1.0)
    perm = torch.where(keep[:, None], torch.arange(c).expand(n, c), perm)
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    grey = torch.rand(n, generator=g) < 0.15 * min(s, 1.0)
    x = torch.where(grey[:, None, None, None], x.mean(1, keepdim=True).expand_as(x), x)
    invert = torch.rand(n, generator=g) < 0.2 * min(s, 1.0)
    x = torch.where(invert[:, None, None, None], 1 - x, x)
    return x.clamp(0, 1)


def _degrade(x: torch.Tensor, g: torch.Generator, s: float) -> torch.Tensor:
    """Random Gaussian blur and Gaussian noise; clamped to [0, 1]."""
    n = x.shape[0]
    blur = torch.rand(n, generator=g) < 0.3 * min(s, 1.0)
    sigma = _uniform(n, 0.4, 1.4, g)
    x = torch.where(blur[:, None, None, None], _gaussian_blur(x, sigma), x)
    noisy = torch.rand(n, generator=g) < 0.5 * min(s, 1.0)
    noise_std = _uniform(n, 0.0, 0.12, g) * s
    noise = torch.randn(x.shape, generator=g) * noise_std[:, None, None, None]
    x = torch.where(noisy[:, None, None, None], x + noise, x)
    return x.clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``x`` (N, C, H, W), 7 taps, replicated borders."""
    r = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1).repeat(c, 1, 1, 1), groups=c)
