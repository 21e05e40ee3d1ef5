"""Dataset sources; each module registers one builder in ``DATASETS``."""

from __future__ import annotations

from ..registry import DATASETS
from ..specs import Spec, parse_spec
from . import digits, folder, imagenet  # noqa: F401  (registration)
from . import classic, digits_shifts, digits_spurious, groups, imagenet_variants, ood  # noqa: F401  (static-evaluator sources)
from .base import ImageDataset, TensorImages, WorldDefaults


def load_dataset(spec: str | Spec) -> ImageDataset:
    """Build the dataset a spec names, e.g. ``"digits"`` or ``"imagenet:/data/val"``."""
    spec = parse_spec(spec, DATASETS, what="dataset")
    return DATASETS.get(spec.source)(spec)


__all__ = ["ImageDataset", "TensorImages", "WorldDefaults", "load_dataset"]
