"""Datasets the studies read: a subset view of a dataset, and an exported static benchmark.

:func:`read_export` reads an export folder written by :func:`fmr_bench.studies.export.export_run`
with the *source* dataset's labels, class names and label space (from ``labels.csv`` and
``generation.json``), and its PNGs exactly as written: no resize or crop at the export's
own resolution, so a model sees the pixels the generating model saw (up to the 8-bit
rounding of the PNG). ``folder:DIR`` reads the same folder as a generic ImageFolder instead
(class names from folder names, labels in sorted folder order, usual resize and crop).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..datasets.base import ImageDataset, TensorImages, WorldDefaults
from ..errors import DataError

GENERATION_FILE = "generation.json"
LABELS_FILE = "labels.csv"
FORMAT = "fmr-static-benchmark"


class _Subset(ImageDataset):
    """Some samples of a file dataset, with their ids, labels and pixels unchanged."""

    def __init__(self, base: ImageDataset, indices: Sequence[int]) -> None:
        super().__init__(spec=base.spec, class_names=base.class_names, ids=[base.ids[i] for i in indices],
                         labels=[base.labels[i] for i in indices], world=base.world, label_space=base.label_space)
        self.base, self.indices = base, list(indices)
        # what the logits cache fingerprints, so that a cached entry describes these pixels
        for attr in ("root", "crop_pct", "border", "transform_id"):
            setattr(self, attr, getattr(base, attr, None))
        self.resolution = base.resolution

    def set_resolution(self, resolution: int) -> None:
        super().set_resolution(resolution)
        self.base.set_resolution(resolution)

    def load(self, i: int) -> torch.Tensor:
        return self.base.load(self.indices[i])


def subset(dataset: ImageDataset, indices: Sequence[int]) -> ImageDataset:
    """The samples ``indices`` of ``dataset`` (same ids, labels, class names and pixels)."""
    if isinstance(dataset, TensorImages):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        sub = TensorImages(dataset.images[idx], [dataset.labels[i] for i in indices], dataset.class_names,
                           spec=dataset.spec, world=dataset.world, ids=[dataset.ids[i] for i in indices],
                           label_space=dataset.label_space)
        if dataset.resolution is not None:
            sub.set_resolution(dataset.resolution)
        return sub
    return _Subset(dataset, indices)


def read_generation(root: Path) -> dict:
    """``generation.json`` of an export folder; :class:`DataError` if absent or foreign."""
    path = root / GENERATION_FILE
    try:
        gen = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{root} holds no {GENERATION_FILE}; pass a folder written by fmr export") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} ({e}); re-run the fmr export command that wrote it") from None
    if gen.get("format") != FORMAT:
        raise DataError(f"{path} is not an fmr export ({FORMAT}); pass a folder written by fmr export")
    return gen


class ExportedImages(ImageDataset):
    """The validated perturbed images of an export folder, labelled as in the source dataset.

    Attributes:
        generation: the folder's ``generation.json``.
        rows: the ``labels.csv`` rows of the images (validated samples).
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        gen = read_generation(root)
        if gen.get("status") != "complete":
            raise DataError(f"{root} is an unfinished export; re-run the fmr export command that wrote it to finish it")
        try:
            text = (root / LABELS_FILE).read_text()
        except OSError as e:
            raise DataError(f"cannot read {root / LABELS_FILE} ({e.strerror or e}); re-run fmr export") from None
        rows = [r for r in csv.DictReader(text.splitlines()) if r.get("file")]
        classes = sorted(gen["classes"], key=lambda c: c["label"])
        world = WorldDefaults(generator=gen["generator"]["spec"], oracle=gen["oracle"]["spec"],
                              step_size=gen["settings"]["step_size"])
        super().__init__(spec=f"export:{root}", class_names=[c["name"] for c in classes], ids=[r["id"] for r in rows],
                         labels=[int(r["label"]) for r in rows], world=world,
                         label_space=gen["dataset"].get("label_space"))
        self.root, self.generation, self.rows = root, gen, rows
        self.files = [root / r["file"] for r in rows]
        self.native = int(gen["images"]["resolution"])
        self.resolution = self.native
        # the logits cache keys on this: it changes whenever the folder's content may have
        self.transform_id = hashlib.sha256((text + json.dumps(gen["request"], sort_keys=True)).encode()).hexdigest()[:16]

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.functional import to_tensor

        try:
            with Image.open(self.files[i]) as im:
                x = to_tensor(im.convert("RGB"))
        except (OSError, ValueError) as e:  # missing, torn or not an image (PIL raises OSError subclasses)
            raise DataError(f"cannot read {self.files[i]} ({type(e).__name__}); re-run the fmr export command "
                            "that wrote it (missing images are regenerated)") from None
        if self.resolution is not None and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = torch.nn.functional.interpolate(x[None], size=(self.resolution,) * 2, mode="bilinear",
                                                align_corners=False)[0].clamp(0, 1)
        return x


def read_export(root: str | Path) -> ExportedImages:
    """The images of an export folder as a dataset with the source dataset's labels."""
    return ExportedImages(root)
