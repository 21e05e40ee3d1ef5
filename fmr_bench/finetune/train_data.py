"""Training data: any dataset spec, a CSV of (path, label), and concatenations.

``csv:FILE`` lists one image per row with columns ``path`` and ``label`` (a class index
or a class name; relative paths are read from the CSV's folder). Class names are the
``label`` values when they are names, else ``?classes=a,b,c`` or ``class0..``.
:class:`ConcatImages` joins sets by class name (static adversarial augmentation: the
training set plus images ``fmr export`` produced, seed 002 App. G).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..datasets import ImageDataset, load_dataset
from ..datasets.base import FileImages
from ..datasets.digits import DIGITS_WORLD
from ..errors import DataError
from ..specs import Spec


def _norm(name: str) -> str:
    return name.lower().replace("_", " ").replace("-", " ").strip()


def csv_images(spec: Spec) -> FileImages:
    import pandas as pd

    path = Path(spec.ident).expanduser()
    if not path.is_file():
        raise DataError(f"CSV {path} does not exist; give csv:FILE with columns path,label")
    try:
        frame = pd.read_csv(path)
    except Exception as e:
        raise DataError(f"cannot read CSV {path} ({type(e).__name__}); give columns path,label") from None
    if not {"path", "label"} <= set(frame.columns):
        raise DataError(f"CSV {path} has columns {', '.join(map(str, frame.columns))}; it needs path and label")
    if frame.empty:
        raise DataError(f"CSV {path} lists no images")
    root = path.parent
    paths = [(root / p) if not Path(p).is_absolute() else Path(p) for p in frame["path"].astype(str)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} images of {path} do not exist (e.g. {missing[0]}); fix the path column")
    raw = frame["label"].tolist()
    if all(isinstance(v, (int,)) or str(v).lstrip("-").isdigit() for v in raw):
        labels = [int(v) for v in raw]
        if min(labels) < 0:
            raise DataError(f"CSV {path} has negative labels; use 0..C-1 or class names")
        given = spec.opts.get("classes")
        names = given.split(",") if given else [f"class{i}" for i in range(max(labels) + 1)]
        if max(labels) >= len(names):
            raise DataError(f"CSV {path} has label {max(labels)} but ?classes= names only {len(names)} classes")
    else:
        names = sorted({str(v) for v in raw})
        labels = [names.index(str(v)) for v in raw]
    return FileImages(root=Path("/"), paths=[p.resolve() for p in paths], spec=str(spec), class_names=names,
                      labels=labels, world=DIGITS_WORLD, crop_pct=float(spec.opts.get("crop_pct", 1.0)))


def load_train_data(spec: str | ImageDataset) -> ImageDataset:
    """A training set from a spec: ``csv:FILE``, or any dataset spec (``digits:train``, ``folder:DIR``...)."""
    if isinstance(spec, ImageDataset):
        return spec
    if spec.startswith("csv:"):
        from ..specs import parse_spec
        from ..registry import Registry

        reg = Registry("training data source")
        reg.register("csv", csv_images)
        return csv_images(parse_spec(spec, reg, what="training data"))
    return load_dataset(spec)


class ConcatImages(ImageDataset):
    """Several datasets as one, in the class space of the first; classes matched by name."""

    def __init__(self, parts: Sequence[ImageDataset]) -> None:
        first = parts[0]
        lookup = {_norm(c): i for i, c in enumerate(first.class_names)}
        self.parts, self.offsets, labels, ids = list(parts), [], [], []
        for k, d in enumerate(parts):
            missing = [c for c in d.class_names if _norm(c) not in lookup]
            if missing:
                raise DataError(f"{d.spec} has classes not in {first.spec} (e.g. {missing[0]!r}); "
                                "concatenate sets with the same class names")
            remap = [lookup[_norm(c)] for c in d.class_names]
            self.offsets.append(len(labels))
            labels += [remap[v] for v in d.labels]
            ids += [f"{k}:{i}" for i in d.ids]
        super().__init__(spec="+".join(d.spec for d in parts), class_names=first.class_names, ids=ids, labels=labels,
                         world=first.world, label_space=first.label_space)

    def set_resolution(self, resolution: int) -> None:
        super().set_resolution(resolution)
        for d in self.parts:
            d.set_resolution(resolution)

    def load(self, i: int) -> torch.Tensor:
        for k in range(len(self.parts) - 1, -1, -1):
            if i >= self.offsets[k]:
                return self.parts[k].load(i - self.offsets[k])
        raise IndexError(i)
