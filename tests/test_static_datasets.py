"""Dataset sources of the static evaluators, on tiny files in their published layouts."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fmr_bench.datasets import load_dataset
from fmr_bench.errors import DataError


def _png(path, seed=0, size=12):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def test_imagenet_a_and_sketch_layouts(tmp_path):
    from fmr_bench.datasets.imagenet import imagenet_wnids
    from fmr_bench.datasets.imagenet_variants import _timm_info

    a_wnids = _timm_info("imagenet_a_synsets.txt")
    _png(tmp_path / "a" / a_wnids[3] / "x.jpg")
    ds = load_dataset(f"imagenet-a:{tmp_path / 'a'}")
    assert ds.labels == [3] and len(ds.class_names) == 200 and len(ds.model_classes) == 1000
    assert ds.projection.groups[3] == (int(_timm_info("imagenet_a_indices.txt")[3]),)
    _png(tmp_path / "sketch" / imagenet_wnids()[7] / "s.JPEG")
    assert load_dataset(f"imagenet-sketch:{tmp_path / 'sketch'}").labels == [7]
    (tmp_path / "v2bad" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match="use imagenet:PATH"):
        load_dataset(f"imagenet-v2:{tmp_path / 'v2bad'}")


def test_objectnet_keeps_only_overlapping_classes_and_rejects_foreign_folders(tmp_path):
    from fmr_bench.datasets.imagenet_variants import objectnet_metadata

    folder_to_label, label_to_ids = objectnet_metadata()
    inside = next(f for f, lab in sorted(folder_to_label.items()) if lab in label_to_ids)
    outside = next(f for f, lab in sorted(folder_to_label.items()) if lab not in label_to_ids)
    _png(tmp_path / "on" / "images" / inside / "1.png")
    _png(tmp_path / "on" / "images" / outside / "2.png")
    ds = load_dataset(f"objectnet:{tmp_path / 'on'}")
    assert len(ds) == 1 and ds.border == 2 and len(ds.class_names) == 113
    assert ds.class_names[ds.labels[0]] == folder_to_label[inside]
    _png(tmp_path / "bad" / "n01440764" / "1.png")
    with pytest.raises(DataError, match="not ObjectNet folders"):
        load_dataset(f"objectnet:{tmp_path / 'bad'}")


def test_imagenet_vid_robust_anchor_frames(tmp_path):
    from importlib import resources

    meta = json.loads((resources.files("fmr_bench") / "data" / "imagenet_vid_robust" / "anchor_labels.json").read_text())
    first = meta["annotations"][0]  # KxDh7a8_AmU_44666/frame-1117.jpg, CSV label 0 (person)
    _png(tmp_path / "vid" / first["key"])
    ds = load_dataset(f"imagenet-vid-robust:{tmp_path / 'vid'}")
    assert len(ds) == 1 and ds.class_names[ds.labels[0]] == "person" and ds.projection.kind == "max"
    assert len(ds.class_names) == 19
    with pytest.raises(DataError, match="anchor frames"):
        load_dataset(f"imagenet-vid-robust:{tmp_path}")


def test_cifar_stl_caltech_pacs_and_cifar1002(tmp_path):
    rng = np.random.default_rng(0)
    c10 = tmp_path / "c" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(c10 / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}, f)
    with open(c10 / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    ds = load_dataset(f"cifar10:{tmp_path / 'c'}")
    assert len(ds) == 4 and ds.class_names[9] == "truck" and ds.load(0).shape == (3, 32, 32)
    np.savez(tmp_path / "c" / "cifar102_test.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
             labels=np.array([1, 1, 5]))
    g = load_dataset(f"cifar10.02:{tmp_path / 'c'}")
    assert len(g) == 7 and g.groups == [0] * 4 + [1] * 3 and g.prompt == "a {}."
    stl = tmp_path / "s" / "stl10_binary"
    stl.mkdir(parents=True)
    rng.integers(0, 256, 2 * 3 * 96 * 96, dtype=np.uint8).tofile(stl / "test_X.bin")
    np.array([1, 10], dtype=np.uint8).tofile(stl / "test_y.bin")
    (stl / "class_names.txt").write_text("\n".join(n.decode() for n in names) + "\n")
    s = load_dataset(f"stl10:{tmp_path / 's'}")
    assert s.labels == [0, 9] and s.load(1).shape == (3, 96, 96)
    for c in ("accordion", "BACKGROUND_Google"):
        _png(tmp_path / "cal" / "101_ObjectCategories" / c / "1.jpg")
    assert load_dataset(f"caltech101:{tmp_path / 'cal'}").class_names == ["accordion"]
    for d, c in (("photo", "dog"), ("sketch", "house")):
        _png(tmp_path / "pacs" / d / c / "1.jpg")
    p = load_dataset(f"pacs:{tmp_path / 'pacs'}")
    assert p.group_names == ["photo", "sketch"] and p.labels == [0, 5] and p.groups == [0, 1]
    with pytest.raises(DataError, match="has 4 classes, expected 100|cifar100"):
        load_dataset(f"cifar100:{tmp_path / 'c'}")
