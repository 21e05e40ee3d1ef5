"""Model sources. Each source is one module with ``load`` and ``weight_refs``.

Add a source by writing ``models/NAME.py`` and registering it below.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from torch import nn

from ..registry import MODEL_SOURCES
from ..specs import Spec, parse_spec
from .base import ClassMap, ImageClassifier, Preprocess, map_classes

MODEL_SOURCES.register("timm", "fmr_bench.models.timm", help="timm:NAME[.TAG] — any timm classifier")
MODEL_SOURCES.register("openclip", "fmr_bench.models.openclip", help="openclip:ARCH/TAG — open_clip zero-shot classifier")
MODEL_SOURCES.register("hf", "fmr_bench.models.hf", help="hf:ORG/REPO — timm model on the Hugging Face Hub")
MODEL_SOURCES.register("file", "fmr_bench.models.file", help="file:PATH — local safetensors / torch checkpoint")
MODEL_SOURCES.register("builtin", "fmr_bench.models.builtin", help="builtin:NAME — shipped digits-world models")


def _source(spec: Spec):
    return importlib.import_module(MODEL_SOURCES._entries[spec.source].target)


def model_weight_refs(spec: str | Spec):
    spec = parse_spec(spec, MODEL_SOURCES, what="model")
    return _source(spec).weight_refs(spec)


def load_model(spec: str | Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True,
               **kwargs) -> ImageClassifier:
    """Build the classifier a spec names.

    Args:
        spec: e.g. ``"timm:resnet50"``, ``"openclip:ViT-B-32/openai"``, ``"file:model.safetensors"``.
        class_names: the dataset's class names (zero-shot models build their head from them).
        pretrained: False builds the architecture with random weights (tests, benchmarks).
    """
    spec = parse_spec(spec, MODEL_SOURCES, what="model")
    return _source(spec).load(spec, class_names=class_names, pretrained=pretrained, **kwargs)


def wrap_module(module: nn.Module, *, input_size: int | tuple[int, int], mean: Sequence[float] = (0.485, 0.456, 0.406),
                std: Sequence[float] = (0.229, 0.224, 0.225), class_names: Sequence[str] | None = None,
                name: str = "module", arch: str | None = None) -> ImageClassifier:
    """Wrap an in-memory ``nn.Module`` (e.g. from a training loop) with its preprocessing.

    Args:
        arch: a spec that builds the untrained architecture (e.g. ``"timm:resnet50"``), so that
            :func:`fmr_bench.save_model` files of this model load with ``file:PATH``.
    """
    if isinstance(module, ImageClassifier):
        return module
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    return ImageClassifier(module, Preprocess(size, tuple(mean), tuple(std)), class_names=class_names,
                           spec=f"module:{name}", arch=arch or f"module:{type(module).__name__}")


__all__ = ["ImageClassifier", "Preprocess", "ClassMap", "map_classes", "load_model", "model_weight_refs", "wrap_module"]
