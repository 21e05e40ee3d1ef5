"""Model sources. Each source is one module with ``load`` and ``weight_refs``.

Add a source by writing ``models/NAME.py`` and registering it below.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..registry import MODEL_SOURCES
from ..specs import WRAPPED_OPTIONS, Option, Spec, parse_spec
from .base import ClassMap, ImageClassifier, Preprocess, map_classes
from .transform import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

# The ?key=value options of each model source (checked by parse_spec; oracles share them).
WEIGHTS = Option("path", example="/path/to/weights.safetensors", help="a local weights file instead of the hub's")
PROMPTS = Option("str", example="openai", help="prompt set of a zero-shot head: single, openai or a template with {}")
TIMM_OPTIONS = {"weights": WEIGHTS,
                "num_classes": Option("int", low=1, example="10", help="size of the classifier head")}
OPENCLIP_OPTIONS = {"weights": WEIGHTS, "prompts": PROMPTS}
FILE_OPTIONS = {"arch": Option("str", example="timm:resnet50", help="a spec building the checkpoint's architecture")}
BUILTIN_OPTIONS = {"prompts": PROMPTS}

MODEL_SOURCES.register("timm", "fmr_bench.models.timm", help="timm:NAME[.TAG][?weights=PATH] — any timm classifier",
                       options=TIMM_OPTIONS)
MODEL_SOURCES.register("openclip", "fmr_bench.models.openclip", options=OPENCLIP_OPTIONS,
                       help="openclip:ARCH/TAG[?weights=PATH&prompts=SET] — open_clip zero-shot classifier")
MODEL_SOURCES.register("hf", "fmr_bench.models.hf", help="hf:ORG/REPO — timm model on the Hugging Face Hub",
                       options=TIMM_OPTIONS)
MODEL_SOURCES.register("file", "fmr_bench.models.file", help="file:PATH[?arch=SPEC] — local safetensors / torch checkpoint",
                       options=FILE_OPTIONS)
MODEL_SOURCES.register("builtin", "fmr_bench.models.builtin", help="builtin:NAME — shipped digits-world models",
                       options=BUILTIN_OPTIONS)
# options after '?' belong to the wrapped spec, which checks them
MODEL_SOURCES.register("gray", "fmr_bench.models.gray", help="gray:SPEC — any model fed the BT.601 luminance of its input",
                       options=WRAPPED_OPTIONS)


def _source(spec: Spec):
    return MODEL_SOURCES.get(spec.source)  # a lazy module entry: the source module


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


def wrap_module(module: nn.Module, *, input_size: int | tuple[int, int] | None = None,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                interpolation: str = "bilinear", crop_pct: float = 1.0, crop_mode: str = "center",
                transform: EvalTransform | None = None, class_names: Sequence[str] | None = None,
                name: str = "module", arch: str | None = None) -> ImageClassifier:
    """Wrap an in-memory ``nn.Module`` (e.g. from a training loop) with its preprocessing.

    Args:
        input_size: side (or (height, width)) of the tensors ``module`` takes.
        mean, std, interpolation, crop_pct, crop_mode: its eval transform. Defaults: ImageNet
            mean/std, bilinear, no crop (``crop_pct=1``: short side resized to the input size,
            centre crop; images already at the input size pass unchanged). Pass
            ``crop_pct=0.875`` for timm's ImageNet default. Static evaluators decode image
            files this way; the FMR loop uses only the size, mean/std and interpolation.
        transform: a complete :class:`EvalTransform` instead of the arguments above
            (e.g. ``load_model("timm:resnet50", pretrained=False).preprocess``).
        arch: a spec that builds the untrained architecture (e.g. ``"timm:resnet50"``), so that
            :func:`fmr_bench.save_model` files of this model load with ``file:PATH``.
    """
    if isinstance(module, ImageClassifier):
        return module
    if transform is None:
        if input_size is None:
            from ..errors import SettingsError

            raise SettingsError("wrap_module needs input_size=… (or transform=EvalTransform(...)), e.g. input_size=224")
        transform = EvalTransform(input_size, tuple(mean), tuple(std), interpolation, crop_pct, crop_mode,
                                  origin="wrap_module arguments")
    return ImageClassifier(module, transform, class_names=class_names,
                           spec=f"module:{name}", arch=arch or f"module:{type(module).__name__}")


__all__ = ["EvalTransform", "ImageClassifier", "Preprocess", "ClassMap", "map_classes", "load_model", "model_weight_refs", "wrap_module"]
