"""Small classification sets for zero-shot evaluation, in their published layouts.

- ``cifar10:PATH`` — ``cifar-10-batches-py/`` (``test_batch``, ``batches.meta``), or class folders.
- ``cifar100:PATH`` — ``cifar-100-python/`` (``test``, ``meta``; fine labels), or class folders.
- ``stl10:PATH`` — ``stl10_binary/`` (``test_X.bin``, ``test_y.bin``, ``class_names.txt``).
- ``caltech101:PATH`` — ``101_ObjectCategories/<class>/*.jpg`` (``BACKGROUND_Google`` dropped).

PATH may be the folder named above or its parent. Files are read directly (no checksum
download logic), so hand-made subsets work too.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..registry import DATASETS
from .base import FileImages, TensorImages, class_folders, dataset_root, folder_images
from .imagenet import IMAGENET_WORLD




def _find(root: Path, sub: str, marker: str) -> Path | None:
    for cand in (root, root / sub):
        if (cand / marker).is_file():
            return cand
    return None


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _tensor_set(spec, images: np.ndarray, labels, names, expected: int) -> TensorImages:
    if len(names) != expected:
        raise DataError(f"{spec} has {len(names)} classes, expected {expected}; check the path")
    return TensorImages(torch.from_numpy(np.ascontiguousarray(images)), [int(v) for v in labels], names,
                        spec=str(spec), world=IMAGENET_WORLD, ids=[f"{spec.source}/test/{i:05d}" for i in range(len(labels))])


def _folder_set(spec, root: Path, expected: int | None, drop: tuple[str, ...] = ()) -> FileImages:
    folders = [f for f in class_folders(root, str(spec)) if f.name not in drop]
    if expected is not None and len(folders) != expected:
        raise DataError(f"{root} has {len(folders)} class folders but {spec.source} has {expected} classes; "
                        f"point {spec.source}: at the published layout")
    return folder_images(root, folders, str(spec), IMAGENET_WORLD)


def _cifar(spec, sub: str, batch: str, meta: str, label_key: bytes, names_key: bytes, n: int):
    root = dataset_root(spec)
    folder = _find(root, sub, batch)
    if folder is None:
        return _folder_set(spec, root, n)
    d = _unpickle(folder / batch)
    names = [s.decode().replace("_", " ") for s in _unpickle(folder / meta)[names_key]]
    images = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return _tensor_set(spec, images, d[label_key], names, n)


@DATASETS.register("cifar10", help="cifar10:PATH — CIFAR-10 test (cifar-10-batches-py or class folders)", options={})
def build_cifar10(spec):
    return _cifar(spec, "cifar-10-batches-py", "test_batch", "batches.meta", b"labels", b"label_names", 10)


@DATASETS.register("cifar100", help="cifar100:PATH — CIFAR-100 test (cifar-100-python or class folders)", options={})
def build_cifar100(spec):
    return _cifar(spec, "cifar-100-python", "test", "meta", b"fine_labels", b"fine_label_names", 100)


@DATASETS.register("stl10", help="stl10:PATH — STL-10 test (stl10_binary)", options={})
def build_stl10(spec):
    root = dataset_root(spec)
    folder = _find(root, "stl10_binary", "test_X.bin")
    if folder is None:
        return _folder_set(spec, root, 10)
    x = np.fromfile(folder / "test_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    y = np.fromfile(folder / "test_y.bin", dtype=np.uint8).astype(np.int64) - 1
    names = (folder / "class_names.txt").read_text().split()
    return _tensor_set(spec, x, y, names, 10)


@DATASETS.register("caltech101", help="caltech101:PATH — Caltech101 101_ObjectCategories folders", options={})
def build_caltech101(spec):
    root = dataset_root(spec)
    if (root / "101_ObjectCategories").is_dir():
        root = root / "101_ObjectCategories"
    return _folder_set(spec, root, None, drop=("BACKGROUND_Google",))
