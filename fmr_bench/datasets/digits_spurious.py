"""``digits-spurious[:train|id|test]`` — a spurious-correlation digits world (like Waterbirds).

Each digit of the digits world is drawn in black ink on a coloured background
(:data:`fmr_bench.digits.scenes.BACKGROUNDS`; class ``c`` "owns" background number ``c``:
zero on red, one on orange, ..., nine on grey):

- ``train`` — the 1437 ``digits:train`` digits; in every class exactly
  ``round(95 %)`` of the images lie on the class's own background, the rest on the other
  nine backgrounds in turn (the majority / minority groups of Waterbirds).
- ``id`` — the 360 ``digits:test`` digits with the same rule: an in-distribution test.
- ``test`` — every ``digits:test`` digit on every background (3600 images): the
  correlation is broken and all 100 groups (class x background) are the same size as the
  class.

Every split carries ``groups`` (``10 * class + background``), ``group_names``
("three on red") and ``backgrounds`` (the background index per image), so
``group-robustness`` reports worst-group and average accuracy on it. The images are a
pure function of :data:`SEED` (the choice of minority images and a small colour jitter).

Options of ``train`` and ``id`` (the fine-tuning testbed of docs/digits-finetune.md):

- ``?correlation=R`` — share of each class on its own background (default 0.95);
- ``?noise=P`` — Colored-MNIST-style label noise on the shape: a share ``P`` of each
  class's images is labelled with another class (each drawn image keeps its digit), and
  the background follows the *given* label. With ``P`` > 1 − ``R`` the background
  predicts the label better than the digit does: the spurious cue is the easier one.
  ``id`` with noise is scored against the noisy labels (as the training set); ``test``
  always carries the true digits (groups by true class).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import SpecError
from ..registry import DATASETS
from ..specs import Option, parse_options
from .base import TensorImages
from .digits import DIGITS_WORLD

SPLITS = ("train", "id", "test")
#: Share of images per class (train and id) on the class's own background.
CORRELATION = 0.95
SEED = 9
#: Colour jitter (uniform +-) of each background and ink channel.
JITTER = 0.05
#: Zero-shot prompt of ``group-robustness`` on these sets ("a photo of a three").
PROMPT = "a photo of a {}"
#: ``?key=value`` options of the correlated splits.
OPTIONS = {
    "correlation": Option("float", CORRELATION, low=0.0, high=1.0, example="1.0",
                          help="train / id: share of each class on its own background"),
    "noise": Option("float", 0.0, low=0.0, high=1.0, high_open=True, example="0.25",
                    help="train / id: share of labels flipped to another class (the background follows the label)"),
}


def noisy_labels(labels: np.ndarray, noise: float, rng: np.random.Generator, n_classes: int = 10) -> np.ndarray:
    """``round(noise * n_c)`` images of each class ``c`` relabelled, in turn, with the other classes."""
    out = labels.copy()
    if noise <= 0:
        return out
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        flip = np.sort(rng.permutation(idx)[:round(noise * len(idx))])
        others = [k for k in range(n_classes) if k != c]
        start = int(rng.integers(len(others)))
        for k, i in enumerate(flip):
            out[i] = others[(start + k) % len(others)]
    return out


def background_names() -> list[str]:
    from ..digits.scenes import BACKGROUNDS

    return list(BACKGROUNDS)


def assign_backgrounds(labels: np.ndarray, correlation: float, rng: np.random.Generator,
                       n_backgrounds: int = 10) -> np.ndarray:
    """Background index per image: ``round(correlation * n_c)`` images of class ``c`` get
    background ``c``; the others, in a random order, cycle through the other backgrounds.

    Args:
        labels: class per image (0..9).
        correlation: share of each class on its own background, in [0, 1].
        rng: the source of the random choice of minority images.
        n_backgrounds: number of backgrounds (equal to the number of classes).
    """
    out = labels.copy()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_minor = len(idx) - round(correlation * len(idx))
        minor = rng.permutation(idx)[:n_minor]
        others = [b for b in range(n_backgrounds) if b != c]
        start = int(rng.integers(len(others)))
        for k, i in enumerate(np.sort(minor)):
            out[i] = others[(start + k) % len(others)]
    return out


@functools.lru_cache(maxsize=2 * len(SPLITS))
def spurious_split(split: str, correlation: float = CORRELATION,
                   noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, 32, 32), labels, background index) of one split; cached.

    ``correlation`` and ``noise`` (see the module) apply to ``train`` and ``id``; the
    defaults give exactly the images and labels of the plain splits.

    Raises:
        SpecError: unknown split.
    """
    from ..digits.images import load_digits_split
    from ..digits.scenes import ink_density, render_scenes

    if split not in SPLITS:
        raise SpecError(f"digits-spurious has splits {', '.join(SPLITS)} (got {split!r}); "
                        "e.g. --data digits-spurious:test")
    source, labels = load_digits_split("train" if split == "train" else "test")
    density = ink_density(source)
    names = background_names()
    rng = np.random.default_rng([SEED, SPLITS.index(split)])
    y = labels.numpy()
    if split == "test":
        nb = len(names)
        bg = np.tile(np.arange(nb), len(y))
        density = density.repeat_interleave(nb, 0)
        y = np.repeat(y, nb)
    else:
        if noise > 0:  # its own stream: the default splits' draws are unchanged
            y = noisy_labels(y, noise, np.random.default_rng([SEED, SPLITS.index(split), 1]))
        bg = assign_backgrounds(y, correlation, rng, len(names))
    jitter = torch.from_numpy(rng.uniform(-JITTER, JITTER, size=(len(y), 2, 3))).float()
    x = render_scenes(density, [names[b] for b in bg], jitter=jitter)
    images = torch.round(x * 255).to(torch.uint8)
    return images, torch.from_numpy(y.astype(np.int64)), torch.from_numpy(bg.astype(np.int64))


class DigitsSpurious(TensorImages):
    """One split of ``digits-spurious`` with group labels (class x background)."""

    transform_id = "digits-spurious-v1"


@DATASETS.register("digits-spurious",
                   help="digits-spurious[:train|id|test] — digits on class-correlated backgrounds (groups)",
                   options=OPTIONS)
def build(spec) -> DigitsSpurious:
    from ..digits import CLASS_NAMES

    split = spec.ident or "test"
    opts = parse_options(spec, OPTIONS, what="dataset")
    if split == "test" and spec.opts:
        raise SpecError("digits-spurious:test breaks the correlation by construction and takes no options; "
                        "give ?correlation= / ?noise= to the train and id splits")
    images, labels, bg = spurious_split(split, opts["correlation"], opts["noise"])
    names = background_names()
    ds = DigitsSpurious(images.clone(), labels.tolist(), CLASS_NAMES, spec=f"digits-spurious:{split}" + (str(spec)[str(spec).index("?"):] if spec.options else ""),
                        world=DIGITS_WORLD, ids=[f"spurious-{split}/{i:05d}" for i in range(len(labels))],
                        label_space="digits")
    nb = len(names)
    ds.backgrounds = bg.tolist()
    ds.groups = [nb * int(y) + int(b) for y, b in zip(labels, bg)]
    ds.group_names = [f"{c} on {b}" for c in CLASS_NAMES for b in names]
    ds.prompt = PROMPT
    return ds
