"""``gray:SPEC`` — any model, fed the luminance of its input (seed 002 App. H, Table 10).

The wrapper turns the [0, 1] RGB pixels into ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B),
replicates it to the model's input channels, and then applies the wrapped model's own
preprocessing. It sits inside the forward pass, so the FMR loop's gradients flow through it
and the generator's colour changes are invisible to the model. Options after ``?`` belong
to the wrapped spec (``gray:timm:resnet50?weights=W.safetensors``); the run's model spec and
arch both carry the ``gray:`` prefix, so a record says the model was grayscale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import SpecError
from ..specs import Spec
from .base import ImageClassifier

#: ITU-R BT.601 luma weights of R, G, B.
BT601 = (0.299, 0.587, 0.114)


def luminance(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """(N, 3, H, W) RGB (or (N, 1, H, W) gray) -> BT.601 luma replicated to ``channels``."""
    if x.shape[1] == 1:
        y = x
    elif x.shape[1] == 3:
        w = torch.tensor(BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        y = (x * w).sum(dim=1, keepdim=True)
    else:
        raise SpecError(f"gray: needs RGB or 1-channel images, got {x.shape[1]} channels")
    return y.expand(-1, channels, -1, -1)


class GrayClassifier(ImageClassifier):
    """``inner`` seeing only the luminance of its input."""

    def __init__(self, inner: ImageClassifier, spec: str) -> None:
        super().__init__(inner, inner.preprocess, class_names=inner.class_names, num_classes=inner.num_classes,
                         spec=spec, arch=f"gray:{inner.arch}", label_space=inner.label_space)
        self.channels = len(inner.preprocess.mean)

    def set_preprocess(self, preprocess) -> None:
        super().set_preprocess(preprocess)
        if isinstance(self.net, ImageClassifier):
            self.net.set_preprocess(preprocess)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(luminance(x, self.channels))

    def describe(self) -> dict:
        return super().describe() | {"grayscale": "ITU-R BT.601 luma (0.299, 0.587, 0.114), replicated",
                                     "wrapped": self.net.describe()}


def _inner(spec: Spec) -> str:
    if not spec.ident:
        raise SpecError("gray: wraps a model spec, e.g. gray:builtin:digits-cnn or gray:timm:resnet50")
    if spec.ident.startswith("gray:"):
        raise SpecError(f"{spec}: the model is grayscale already; drop one gray:")
    return spec.ident + ("?" + "&".join(f"{k}={v}" for k, v in spec.options) if spec.options else "")


def load(spec: Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True,
         **kwargs) -> ImageClassifier:
    from . import load_model

    inner = load_model(_inner(spec), class_names=class_names, pretrained=pretrained, **kwargs)
    return GrayClassifier(inner, spec=str(spec))


def weight_refs(spec: Spec):
    from . import model_weight_refs

    return model_weight_refs(_inner(spec))


def wrap(model: nn.Module) -> GrayClassifier:
    """The grayscale version of an in-memory classifier (e.g. in a training loop)."""
    if not isinstance(model, ImageClassifier):
        raise SpecError("gray.wrap takes an ImageClassifier; wrap a bare module with fmr_bench.wrap_module first")
    return GrayClassifier(model, spec=f"gray:{model.spec}")
