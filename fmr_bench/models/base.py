"""The classifier wrapper every model source returns.

An :class:`ImageClassifier` takes pixels in [0, 1] of any size and applies the model's
own preprocessing (resize to its input size, mean/std normalisation) differentiably,
so the FMR loop can backpropagate from the logits to the generator's latent. It carries
the model's :class:`~fmr_bench.models.transform.EvalTransform` (``preprocess``), which the
static evaluators apply when they decode images (crop, resize) before this forward pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClassMappingError
from .transform import EvalTransform


#: The former name of :class:`EvalTransform` (kept so existing code and pickles still work).
Preprocess = EvalTransform


class ImageClassifier(nn.Module):
    """A classifier over pixels in [0, 1] with its preprocessing built in.

    Args:
        net: the network; takes normalised (N, 3, H, W) tensors, returns logits.
        preprocess: the eval transform of ``net``: input size, crop, interpolation, mean/std.
        class_names: names of the output classes, when known (used to map a dataset's
            classes onto the model's outputs).
        spec: the spec string the model was built from (for records).
    """

    def __init__(self, net: nn.Module, preprocess: EvalTransform, *, class_names: Sequence[str] | None = None,
                 num_classes: int | None = None, spec: str = "", arch: str = "",
                 label_space: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.preprocess = preprocess
        self.class_names = list(class_names) if class_names is not None else None
        self.num_classes = num_classes or (len(self.class_names) if self.class_names else None)
        self.spec = spec
        self.arch = arch or spec
        self.label_space = label_space
        self.register_buffer("_mean", torch.tensor(preprocess.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(preprocess.std).view(1, -1, 1, 1), persistent=False)

    def set_preprocess(self, preprocess: EvalTransform) -> None:
        """Replace the eval transform (and the mean/std the forward pass applies)."""
        self.preprocess = preprocess
        device = self._mean.device
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, -1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(self.preprocess.input_size):
            mode = "bicubic" if self.preprocess.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x, size=self.preprocess.input_size, mode=mode, align_corners=False, antialias=False)
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def freeze(self) -> "ImageClassifier":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def weights_hash(self) -> str:
        """sha256 over the state dict (names, dtypes, values); first 16 hex digits."""
        h = hashlib.sha256()
        for name, t in self.state_dict().items():
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "arch": self.arch, "num_classes": self.num_classes,
                "preprocess": self.preprocess.to_dict()}


@dataclass(frozen=True)
class ClassMap:
    """Maps dataset label i to the model output ``index[i]``."""

    index: tuple[int, ...]
    how: str = field(default="identity")

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(self.index, dtype=torch.long, device=device)


def _norm(name: str) -> str:
    return name.lower().replace("_", " ").replace("-", " ").strip()


def map_classes(model_classes: Sequence[str] | None, num_outputs: int | None,
                data_classes: Sequence[str], *, label_space: str | None = None,
                model_label_space: str | None = None, model: str = "model") -> ClassMap:
    """How each dataset class maps onto a model output.

    Order of preference: the same named label space (e.g. both "imagenet-1k"), then
    class names, then equal class counts.

    Raises:
        ClassMappingError: when neither names nor counts allow a mapping.
    """
    n = len(data_classes)
    if label_space and model_label_space == label_space:
        return ClassMap(tuple(range(n)), f"label space {label_space}")
    if model_classes is not None:
        lookup = {_norm(c): i for i, c in enumerate(model_classes)}
        missing = [c for c in data_classes if _norm(c) not in lookup]
        if not missing:
            return ClassMap(tuple(lookup[_norm(c)] for c in data_classes), "class names")
        if len(model_classes) != n:
            raise ClassMappingError(
                f"{model} has {len(model_classes)} classes and the dataset {n}, and "
                f"{len(missing)} dataset classes (e.g. {missing[0]!r}) have no model class of that name; "
                "evaluate on a dataset with the model's classes or pass a model trained on this one"
            )
    if num_outputs is not None and num_outputs == n:
        return ClassMap(tuple(range(n)), "same class count")
    raise ClassMappingError(
        f"{model} has {num_outputs} outputs but the dataset has {n} classes and the model carries no "
        "class names to match; use a model trained on this dataset or save it with its class names "
        "(fmr_bench.save_model(..., class_names=...))"
    )
