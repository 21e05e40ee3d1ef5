"""The digits judge: an independent, shape-only digit classifier for auditing oracles.

The FMR protocol trusts its oracle to say whether a perturbed image still shows its
class. To check that trust, a second classifier must judge the same images without
sharing the oracle's blind spots. ``builtin:digits-judge`` is built to differ from the
digits CLIP oracle in everything but the task:

- **data treatment**: it sees only the digit's shape. Colour is dropped (luminance),
  the paper colour is estimated from the image border and the ink is the absolute
  difference to it (so dark-on-light and light-on-dark read alike), the result is
  area-averaged to 8x8 (the resolution the digits were scanned at) and scaled so that
  the strongest ink is 1;
- **training data**: only the clean train split with its own light geometric jitter
  (no VQGAN images, no colour augmentation, no captions);
- **architecture**: a small MLP on the 64 shape features (no convolutions, no text);
- **training code**: ``scripts/train_digits_judge.py``, separate from the world's script.

Every step is differentiable, so the judge is also usable as an evaluated model
(``--model builtin:digits-judge``). It takes pixels in [0, 1] as they are (its
:class:`~fmr_bench.models.base.Preprocess` has mean 0, std 1) and does its own feature
extraction inside the network.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

#: Weights file name inside ``WEIGHTS_DIR``.
JUDGE_WEIGHTS = "digits-judge.safetensors"
#: Script that writes the judge's weights and its card.
JUDGE_SCRIPT = "scripts/train_digits_judge.py"
#: Side of the shape grid the judge classifies (the digits' native resolution).
GRID = 8
#: Clean accuracy on digits:test below which the shipped judge is not fit to audit (tests check it).
MIN_CLEAN_ACCURACY = 0.98

# ITU-R BT.601 luma weights: the judge looks at brightness, not hue.
_LUMA = (0.299, 0.587, 0.114)


class ShapeFeatures(nn.Module):
    """Pixels (N, 3, H, W) in [0, 1] -> shape map (N, grid*grid) in [0, 1].

    Args:
        grid: side of the output map; H and W must be multiples of it.
    """

    def __init__(self, grid: int = GRID) -> None:
        super().__init__()
        self.grid = grid
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lum = (x * self.luma.to(x.dtype)).sum(1)  # (N, H, W)
        # The paper colour is what surrounds the digit: the mean of the one-pixel frame.
        frame = torch.cat([lum[:, 0], lum[:, -1], lum[:, 1:-1, 0], lum[:, 1:-1, -1]], dim=1)
        ink = (lum - frame.mean(1)[:, None, None]).abs()
        small = F.adaptive_avg_pool2d(ink[:, None], self.grid).flatten(1)
        # Scale so the strongest ink is 1: contrast and tint then do not matter, only shape.
        return small / small.amax(1, keepdim=True).clamp_min(1e-3)


class DigitsJudge(nn.Module):
    """Shape features followed by an MLP; returns (N, 10) logits for pixels in [0, 1].

    Args:
        grid: side of the shape map (:class:`ShapeFeatures`).
        hidden: width of the hidden layers.
        num_classes: number of output logits.
    """

    def __init__(self, grid: int = GRID, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.features = ShapeFeatures(grid)
        self.mlp = nn.Sequential(
            nn.Linear(grid * grid, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of pixels (N, 3, H, W) in [0, 1]."""
        return self.mlp(self.features(x))


def load_digits_judge(pretrained: bool = True, path: Path | None = None) -> DigitsJudge:
    """The judge in eval mode, with its shipped weights (fp16 on disk, fp32 in memory).

    Args:
        pretrained: load the weights; otherwise keep the random initialisation.
        path: weights file to load instead of the shipped one (the training script's checks).

    Raises:
        WeightsError: the weights file is missing or does not fit.
    """
    from . import WEIGHTS_DIR

    judge = DigitsJudge()
    if pretrained:
        path = path or WEIGHTS_DIR / JUDGE_WEIGHTS
        if not path.is_file():
            raise WeightsError(f"digits judge weights not found at {path}; create them with: python {JUDGE_SCRIPT}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = {k: v.float() for k, v in load_file(str(path)).items()}
            judge.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{path} is not a digits judge ({first}); re-create it with: "
                               f"python {JUDGE_SCRIPT}") from None
    return judge.eval()
