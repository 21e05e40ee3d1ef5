"""Group-shift sets with per-sample group labels (StarFT §4.2).

- ``waterbirds:PATH[?split=test]`` — ``PATH/metadata.csv`` (columns ``img_filename``, ``y``,
  ``split`` 0/1/2 = train/val/test, ``place``); groups = (bird, background).
- ``pacs:PATH`` — ``PATH/<domain>/<class>/*`` with domains art_painting, cartoon, photo,
  sketch; groups = domains.
- ``cifar10.02:PATH`` — ``PATH/cifar-10-batches-py/test_batch`` and ``PATH/cifar102_test.npz``
  (CIFAR-10.2, keys ``images`` NHWC uint8 and ``labels``); groups = data source.

Each carries ``groups`` (int per sample), ``group_names`` and ``prompt``, the zero-shot
template of StarFT Table 14 (after Zhang and Ré, 2022).
"""

from __future__ import annotations

import csv

import numpy as np
import torch

from ..errors import DataError, SpecError
from ..registry import DATASETS
from ..specs import Option
from .base import FileImages, TensorImages, class_folders, dataset_root, list_images
from .imagenet import IMAGENET_WORLD

WATERBIRDS_PROMPT = "This is a picture of a {}."
PACS_PROMPT = "a {}."
CIFAR1002_PROMPT = "a {}."
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")




def _attach(ds, groups: list[int], group_names: list[str], prompt: str):
    ds.groups = list(groups)
    ds.group_names = list(group_names)
    ds.prompt = prompt
    return ds


@DATASETS.register("waterbirds", help="waterbirds:PATH[?split=test|val|train] — Waterbirds with metadata.csv",
                   options={"split": Option("choice", "test", choices=("test", "val", "train"), example="test")})
def build_waterbirds(spec):
    root = dataset_root(spec, check="folder")
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"{meta} is missing; waterbirds: expects the published folder with metadata.csv "
                        "(columns img_filename, y, split, place)")
    split_name = spec.opts.get("split", "test")
    splits = {"train": 0, "val": 1, "test": 2}
    if split_name not in splits:
        raise SpecError(f"waterbirds split {split_name!r}; use ?split=train, val or test")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"img_filename", "y", "split", "place"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{meta} lacks columns {sorted(need - set(rows[0] if rows else []))}; "
                        "use the published Waterbirds metadata.csv")
    rows = [r for r in rows if int(r["split"]) == splits[split_name]]
    if not rows:
        raise DataError(f"{meta} lists no {split_name} images")
    paths = [root / r["img_filename"] for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} images listed in {meta} are missing (e.g. {missing[0]}); "
                        "restore them or point waterbirds: at the complete folder")
    labels = [int(r["y"]) for r in rows]
    groups = [2 * int(r["y"]) + int(r["place"]) for r in rows]
    ds = FileImages(root=root, paths=paths, spec=str(spec), class_names=["landbird", "waterbird"], labels=labels,
                    world=IMAGENET_WORLD)
    names = ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
    return _attach(ds, groups, names, WATERBIRDS_PROMPT)


@DATASETS.register("pacs", help="pacs:PATH — PACS <domain>/<class>/ folders; groups = domains", options={})
def build_pacs(spec):
    root = dataset_root(spec, check="folder")
    domains = [d for d in class_folders(root, str(spec))]
    bad = [d.name for d in domains if d.name not in PACS_DOMAINS]
    if bad:
        raise DataError(f"{root} has folders {bad[:3]} that are not PACS domains ({', '.join(PACS_DOMAINS)}); "
                        "pacs: expects PATH/<domain>/<class>/image.jpg")
    pos = {c: k for k, c in enumerate(PACS_CLASSES)}
    paths, labels, groups = [], [], []
    for g, d in enumerate(domains):
        for cf in class_folders(d, str(spec)):
            if cf.name not in pos:
                raise DataError(f"{cf} is not a PACS class ({', '.join(PACS_CLASSES)})")
            files = list_images(cf)
            paths += files
            labels += [pos[cf.name]] * len(files)
            groups += [g] * len(files)
    if not paths:
        raise DataError(f"{root} holds no images")
    ds = FileImages(root=root, paths=paths, spec=str(spec), class_names=list(PACS_CLASSES), labels=labels,
                    world=IMAGENET_WORLD)
    return _attach(ds, groups, [d.name for d in domains], PACS_PROMPT)


@DATASETS.register("cifar10.02", help="cifar10.02:PATH — CIFAR-10 test + CIFAR-10.2 test; groups = source", options={})
def build_cifar1002(spec):
    import pickle

    root = dataset_root(spec, check="folder")
    c10 = next((p for p in (root / "cifar-10-batches-py" / "test_batch", root / "test_batch") if p.is_file()), None)
    c102 = root / "cifar102_test.npz"
    if c10 is None or not c102.is_file():
        raise DataError(f"{root} needs cifar-10-batches-py/test_batch and cifar102_test.npz (CIFAR-10.2); "
                        "put both in one folder")
    with open(c10, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    x10 = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y10 = list(d[b"labels"])
    z = np.load(c102)
    x102 = np.asarray(z["images"], dtype=np.uint8).transpose(0, 3, 1, 2)
    y102 = [int(v) for v in z["labels"]]
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate([x10, x102])))
    ids = [f"cifar10/{i:05d}" for i in range(len(y10))] + [f"cifar10.2/{i:05d}" for i in range(len(y102))]
    ds = TensorImages(images, y10 + y102, list(CIFAR10_CLASSES), spec=str(spec), world=IMAGENET_WORLD, ids=ids)
    return _attach(ds, [0] * len(y10) + [1] * len(y102), ["cifar10", "cifar10.2"], CIFAR1002_PROMPT)
