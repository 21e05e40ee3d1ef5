"""The ImageNet family of distribution shifts, each in its published folder layout.

- ``imagenet-r:PATH`` / ``imagenet-a:PATH``: 200 wnid folders; a model's 1000 ImageNet
  logits are restricted to the 200-class subset before the argmax (indices that timm
  ships as ``timm/data/_info/imagenet_{r,a}_indices.txt``).
- ``imagenet-sketch:PATH``: 1000 wnid folders (``sketch/nXXXXXXXX/*.JPEG``).
- ``imagenet-v2:PATH``: folders ``0`` … ``999`` named by class index
  (``imagenetv2-matched-frequency-format-val/``).
- ``objectnet:PATH``: ``objectnet-1.0/images/<folder>/*.png`` (PATH may be the release
  root or its ``images/`` folder); only the 113 classes that overlap ImageNet are kept,
  a 2-pixel border is cropped first, and an ObjectNet class's logit is the max over the
  ImageNet classes it maps to.
- ``imagenet-vid-robust:PATH``: the anchor frames of ImageNet-Vid-Robust
  (``PATH/<video>/<frame>.jpg``); a class's logit is the max over its ImageNet classes.

Every source keeps the ImageNet class names as the names a model is built with
(``model_classes``), so one model (one weights hash) serves the whole family and zero-shot
heads are the 1000-class ImageNet head, as in CLIP and WiSE-FT.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from importlib import resources
from pathlib import Path


from ..errors import DataError
from ..registry import DATASETS
from .base import FileImages, class_folders, collect_images, dataset_root
from .imagenet import IMAGENET_WORLD, WNID, imagenet_class_names, imagenet_wnids
from .projection import Projection


def _timm_info(name: str) -> list[str]:
    import timm

    with open(os.path.join(os.path.dirname(timm.__file__), "data", "_info", name)) as f:
        return f.read().split()


def _data_file(*parts: str) -> Path:
    return Path(str(resources.files("fmr_bench") / "data" / Path(*parts)))


class ProjectedImages(FileImages):
    """File images whose classes are read off a model's ImageNet outputs via a projection.

    ``border`` pixels are cropped from every side before resizing (ObjectNet's frame).
    """

    def __init__(self, *, projection: Projection, model_classes: list[str], border: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.projection = projection
        self.model_classes = model_classes
        self.border = border

    def prepare(self, im):
        return border_crop(im, self.border) if self.border else im

    def describe(self) -> dict:
        return super().describe() | {"projection": self.projection.describe(), "border_crop": self.border}


def border_crop(im, border: int = 2):
    """Crop ``border`` pixels from each side of a PIL image (ObjectNet's 1-2 px frame)."""
    w, h = im.size
    return im.crop((border, border, w - border, h - border))




def _subset_source(spec, which: str) -> ProjectedImages:
    root = dataset_root(spec, check=None)
    folders = class_folders(root, str(spec))
    synsets = _timm_info(f"imagenet_{which}_synsets.txt")
    indices = [int(i) for i in _timm_info(f"imagenet_{which}_indices.txt")]
    pos = {w: k for k, w in enumerate(synsets)}
    bad = [f.name for f in folders if f.name not in pos]
    if bad:
        extra = (f" ({len(folders)} folders: this looks like full ImageNet; use imagenet:{root})"
                 if len(folders) > len(synsets) else "")
        raise DataError(f"{len(bad)} folders of {root} (e.g. {bad[0]!r}) are not among the 200 ImageNet-{which.upper()} "
                        f"classes{extra}; imagenet-{which}: expects the published layout {root}/nXXXXXXXX/*.jpg")
    paths, labels = collect_images(root, folders, pos, str(spec))
    names = imagenet_class_names()
    return ProjectedImages(root=root, paths=paths, spec=str(spec), class_names=[names[i] for i in indices],
                           labels=labels, world=IMAGENET_WORLD, label_space=f"imagenet-{which}",
                           projection=Projection("subset", tuple((i,) for i in indices)), model_classes=names)


@DATASETS.register("imagenet-r", help="imagenet-r:PATH — ImageNet-Rendition, 200 wnid folders", options={})
def build_r(spec) -> ProjectedImages:
    return _subset_source(spec, "r")


@DATASETS.register("imagenet-a", help="imagenet-a:PATH — ImageNet-A, 200 wnid folders", options={})
def build_a(spec) -> ProjectedImages:
    return _subset_source(spec, "a")


@DATASETS.register("imagenet-sketch", help="imagenet-sketch:PATH — ImageNet-Sketch, 1000 wnid folders", options={})
def build_sketch(spec) -> FileImages:
    from .imagenet import build

    return build(spec)


@DATASETS.register("imagenet-v2", help="imagenet-v2:PATH — ImageNetV2, folders 0..999 named by class index", options={})
def build_v2(spec) -> FileImages:
    root = dataset_root(spec, check=None)
    folders = class_folders(root, str(spec))
    bad = [f.name for f in folders if not (f.name.isdigit() and 0 <= int(f.name) < 1000)]
    if bad:
        hint = " (wnid folders: use imagenet:PATH)" if WNID.match(bad[0]) else ""
        raise DataError(f"{len(bad)} folders of {root} (e.g. {bad[0]!r}) are not class indices 0..999{hint}; "
                        f"imagenet-v2: expects the published layout {root}/<0..999>/*.jpeg")
    paths, labels = collect_images(root, folders, {f.name: int(f.name) for f in folders}, str(spec))
    return FileImages(root=root, paths=paths, spec=str(spec), class_names=imagenet_class_names(), labels=labels,
                      world=IMAGENET_WORLD, label_space="imagenet-1k")


@functools.lru_cache(maxsize=1)
def objectnet_metadata() -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(folder -> ObjectNet label, ObjectNet label -> ImageNet indices) for the 113 shared classes.

    Origin: mlfoundations/wise-ft, src/datasets/objectnet_metadata/ (copied to fmr_bench/data/objectnet).
    """
    meta = _data_file("objectnet")
    folder_to_label = json.loads((meta / "folder_to_objectnet_label.json").read_text())
    to_imagenet = json.loads((meta / "objectnet_to_imagenet_1k.json").read_text())
    pytorch_to_2012 = json.loads((meta / "pytorch_to_imagenet_2012_id.json").read_text())
    id2012_to_pytorch = {v: int(k) for k, v in pytorch_to_2012.items()}
    lines = (meta / "imagenet_to_label_2012_v2").read_text().splitlines()
    name_to_index = {line.strip(): id2012_to_pytorch[i] for i, line in enumerate(lines) if i in id2012_to_pytorch}
    label_to_ids = {label: tuple(sorted(name_to_index[n] for n in names.split("; "))) for label, names in to_imagenet.items()}
    return folder_to_label, label_to_ids


@DATASETS.register("objectnet", help="objectnet:PATH — ObjectNet images/<folder>, 113 ImageNet-overlapping classes", options={})
def build_objectnet(spec) -> ProjectedImages:
    root = dataset_root(spec, check=None)
    if (root / "images").is_dir():
        root = root / "images"
    folders = class_folders(root, str(spec))
    folder_to_label, label_to_ids = objectnet_metadata()
    unknown = [f.name for f in folders if f.name not in folder_to_label]
    if unknown:
        raise DataError(f"{len(unknown)} folders of {root} (e.g. {unknown[0]!r}) are not ObjectNet folders; "
                        "objectnet: expects the published layout objectnet-1.0/images/<folder>/*.png")
    labels_sorted = sorted(label_to_ids)
    pos = {label: k for k, label in enumerate(labels_sorted)}
    kept = [f for f in folders if folder_to_label[f.name] in pos]
    if not kept:
        raise DataError(f"none of the folders of {root} is one of the 113 ObjectNet classes that overlap ImageNet")
    paths, labels = collect_images(root, kept, {f.name: pos[folder_to_label[f.name]] for f in kept}, str(spec))
    return ProjectedImages(root=root, paths=paths, spec=str(spec), class_names=labels_sorted, labels=labels,
                           world=IMAGENET_WORLD, label_space="objectnet-113",
                           projection=Projection("max", tuple(label_to_ids[k] for k in labels_sorted)),
                           model_classes=imagenet_class_names(), border=2)


@DATASETS.register("imagenet-vid-robust", help="imagenet-vid-robust:PATH — ImageNet-Vid-Robust anchor frames", options={})
def build_vid_robust(spec) -> ProjectedImages:
    """Anchor frames ``PATH/<ytid>_<time_ms>/frame-N.jpg`` of the reviewed anchors.

    An anchor's class is its label in ``ytbb_robustness_test_anchors_full.csv``; other classes
    the reviewers saw in the frame are ignored (single-label accuracy and calibration).
    Origin of the metadata: mlfoundations/wise-ft, src/datasets/ytbb-robust_metadata/.
    """
    root = dataset_root(spec, check=None)
    if not root.is_dir():
        raise DataError(f"dataset path {root} does not exist; check the path in {spec}")
    meta = _data_file("imagenet_vid_robust")
    anchors = json.loads((meta / "anchor_labels.json").read_text())["annotations"]
    names = json.loads((meta / "ytbb_class_index.json").read_text())
    groups = json.loads((meta / "rev_class_idx_map.json").read_text())
    with open(meta / "ytbb_robustness_test_anchors_full.csv", newline="") as f:
        label_of = {f"{r['ytid']}_{r['time_ms']}": int(r["label"]) for r in csv.DictReader(f)}
    classes = sorted(int(k) for k in groups)  # YTBB classes that map to ImageNet classes
    pos = {c: k for k, c in enumerate(classes)}
    paths, labels = [], []
    for a in anchors:
        rel = Path(*Path(a["key"]).parts[-2:])
        label = label_of.get(rel.parts[0])
        p = root / rel
        if label in pos and p.is_file():
            paths.append(p)
            labels.append(pos[label])
    if not paths:
        example = Path(*Path(anchors[0]["key"]).parts[-2:])
        raise DataError(f"{root} holds none of the {len(anchors)} anchor frames (e.g. {example}); "
                        "point imagenet-vid-robust: at the folder holding <video>_<time>/frame-N.jpg")
    return ProjectedImages(root=root, paths=paths, spec=str(spec), class_names=[names[str(c)] for c in classes],
                           labels=labels, world=IMAGENET_WORLD, label_space="ytbb-robust",
                           projection=Projection("max", tuple(tuple(groups[str(c)]) for c in classes)),
                           model_classes=imagenet_class_names())


__all__ = ["ProjectedImages", "border_crop", "imagenet_wnids", "objectnet_metadata"]
