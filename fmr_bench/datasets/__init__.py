"""Dataset sources; each module registers one builder in ``DATASETS``."""

from __future__ import annotations

from ..registry import DATASETS
from ..specs import Spec, parse_spec
from . import digits, folder, imagenet  # noqa: F401  (registration)
from . import classic, digits_shifts, digits_spurious, groups, imagenet_variants, ood  # noqa: F401  (static-evaluator sources)
from .base import ImageDataset, TensorImages, WorldDefaults


def load_dataset(spec: str | Spec) -> ImageDataset:
    """Build the dataset a spec names, e.g. ``"digits"`` or ``"imagenet:/data/val"``.

    A set of the data table given without a path (``imagenet-r``) is read from the data root
    (``FMR_DATA``, default ``<cache dir>/data``; see :mod:`fmr_bench.datasets.fetch`).
    """
    spec = parse_spec(spec, DATASETS, what="dataset")
    if not spec.ident:
        from dataclasses import replace

        from .fetch import default_path, missing_message

        path = default_path(spec.source)
        if path is not None:
            if not path.is_dir():
                from ..errors import DataError

                raise DataError(missing_message(spec.source, path))
            spec = replace(spec, ident=str(path))
    return DATASETS.get(spec.source)(spec)


__all__ = ["ImageDataset", "TensorImages", "WorldDefaults", "load_dataset"]
