"""How a dataset's classes are read off a model's outputs in another label space.

ImageNet-R/A keep 200 of the 1000 ImageNet outputs (argmax over the subset); ObjectNet
and ImageNet-Vid-Robust take, per class, the max over the ImageNet outputs it maps to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Projection:
    """Dataset class ``k`` reads the model outputs ``groups[k]`` (max over them).

    Attributes:
        kind: ``"subset"`` (one output per class) or ``"max"`` (max over several).
        groups: per dataset class, the indices in ``space``.
        space: the model label space the indices refer to (``"imagenet-1k"``).
        num_outputs: size of that space.
    """

    kind: str
    groups: tuple[tuple[int, ...], ...]
    space: str = "imagenet-1k"
    num_outputs: int = 1000

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "subset":
            return restrict_to_subset(logits, [g[0] for g in self.groups])
        return max_project(logits, self.groups)

    def describe(self) -> dict:
        return {"kind": self.kind, "space": self.space, "num_classes": len(self.groups)}


def restrict_to_subset(logits: torch.Tensor, subset: Sequence[int]) -> torch.Tensor:
    """Keep only the columns ``subset`` (e.g. the 200 ImageNet-R classes), in that order.

    The argmax of the result indexes ``subset``; map it back with ``subset[argmax]``.
    """
    return logits[:, torch.as_tensor(list(subset), dtype=torch.long)]


def max_project(logits: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(N, len(groups)) logits: column g is the max over the source columns ``groups[g]``.

    Used for ObjectNet, whose classes each map to one or more ImageNet classes.
    """
    out = torch.empty(logits.shape[0], len(groups), dtype=logits.dtype)
    for g, cols in enumerate(groups):
        out[:, g] = logits[:, list(cols)].max(-1).values
    return out
