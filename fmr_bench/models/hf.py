"""``hf:ORG/REPO`` — a timm model published on the Hugging Face Hub.

Built by timm from the repo's ``config.json``; its eval transform is the ``pretrained_cfg``
recorded there (input size, crop_pct, crop_mode, interpolation, mean/std), read through
``timm.data.resolve_data_config`` as for ``timm:`` models.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import SpecError
from ..specs import Spec
from . import timm as timm_source
from .base import ImageClassifier


def _as_timm(spec: Spec) -> Spec:
    if "/" not in spec.ident:
        raise SpecError(f"hf spec needs ORG/REPO, e.g. hf:timm/resnet50.a1_in1k (got {spec.ident!r})")
    return Spec("timm", f"hf-hub:{spec.ident}", spec.options)


def weight_refs(spec: Spec):
    return timm_source.weight_refs(_as_timm(spec))


def load(spec: Spec, *, class_names: Sequence[str] | None = None, pretrained: bool = True) -> ImageClassifier:
    model = timm_source.load(_as_timm(spec), class_names=class_names, pretrained=pretrained)
    model.spec = str(spec)
    return model
