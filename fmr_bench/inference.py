"""Batched inference over a dataset, with an on-disk logits cache.

One forward pass over a dataset serves every static evaluator: logits are stored under
``$FMR_CACHE/logits/<key>.pt``, keyed by a hash of everything that determines them
(model spec, weights hash, preprocessing, dataset spec, sample ids and labels, input
resolution and crop). A second evaluator on the same model and data therefore costs
only its metric.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .datasets.base import FileImages, ImageDataset
from .errors import OutputError
from .files import save_torch
from .models import ImageClassifier
from .weights import cache_dir

CACHE_VERSION = 1


@dataclass
class Logits:
    """Model outputs on a dataset, in dataset order."""

    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) long, in the dataset's label space
    ids: list[str]
    key: str
    cached: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float | None:
        return len(self.ids) / self.seconds if self.seconds > 0 and not self.cached else None


def logits_cache_root() -> Path:
    return Path(os.environ.get("FMR_LOGITS_CACHE", cache_dir() / "logits")).expanduser()


def input_resolution(model: ImageClassifier, dataset: ImageDataset) -> int:
    """File datasets are decoded at the model's input size; tensor datasets stay native."""
    if isinstance(dataset, FileImages) or dataset.resolution is None:
        return int(model.preprocess.input_size[0])
    return int(dataset.resolution)


def dataset_fingerprint(dataset: ImageDataset) -> dict:
    h = hashlib.sha256()
    for sid, label in zip(dataset.ids, dataset.labels):
        h.update(f"{sid}\t{label}\n".encode())
    return {"spec": dataset.spec, "n": len(dataset), "samples_sha256": h.hexdigest()[:16],
            "crop_pct": getattr(dataset, "crop_pct", None), "border": getattr(dataset, "border", 0),
            "root": str(getattr(dataset, "root", "")), "transform": getattr(dataset, "transform_id", None)}


def logits_key(model: ImageClassifier, dataset: ImageDataset, resolution: int, weights_hash: str | None = None) -> str:
    desc = {"v": CACHE_VERSION, "model": model.spec, "arch": model.arch, "weights": weights_hash or model.weights_hash(),
            "preprocess": model.preprocess.to_dict(), "dataset": dataset_fingerprint(dataset), "resolution": resolution}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def default_workers(dataset: ImageDataset) -> int:
    if getattr(dataset, "images", None) is not None:
        return 0  # in memory: worker processes only add overhead
    return max(1, min(8, os.cpu_count() or 1))


@torch.inference_mode()
def compute_logits(model: ImageClassifier, dataset: ImageDataset, *, batch_size: int = 64,
                   num_workers: int | None = None, device: str | torch.device = "cpu", cache: bool = True,
                   weights_hash: str | None = None, progress: Callable[[int, int], None] | None = None) -> Logits:
    """Logits of ``model`` on every sample of ``dataset`` (read from the cache when there).

    Args:
        model: the classifier (put in eval mode here).
        dataset: any :class:`ImageDataset`; file datasets are decoded at the model's input size.
        batch_size: images per forward pass.
        num_workers: DataLoader workers; default all cores for file datasets, 0 in memory.
        cache: read and write the on-disk cache.
        weights_hash: the model's weights hash if already computed.
    """
    resolution = input_resolution(model, dataset)
    dataset.set_resolution(resolution)
    whash = weights_hash or model.weights_hash()
    key = logits_key(model, dataset, resolution, whash)
    path = logits_cache_root() / f"{key}.pt"
    if cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return Logits(blob["logits"], blob["labels"], list(blob["ids"]), key, cached=True)
        except Exception:  # a torn or foreign file: recompute
            path.unlink(missing_ok=True)
    device = torch.device(device)
    model = model.to(device).eval()
    workers = default_workers(dataset) if num_workers is None else num_workers
    loader = None if _in_memory(dataset) else torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    outs, labels, ids = [], [], []
    start = time.perf_counter()
    done = 0
    for batch_ids, images, batch_labels in _batches(dataset, loader, batch_size):
        x = images.to(device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().cpu())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
        ids += list(batch_ids)
        done += len(batch_ids)
        if progress:
            progress(done, len(dataset))
    seconds = time.perf_counter() - start
    logits = torch.cat(outs) if outs else torch.empty(0, 0)
    lab = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    if cache and len(ids):
        try:
            save_torch({"logits": logits, "labels": lab, "ids": ids}, path)
        except OutputError:
            pass  # a cache we cannot write only costs time
    return Logits(logits, lab, ids, key, cached=False, seconds=seconds)


def _in_memory(dataset: ImageDataset) -> bool:
    images = getattr(dataset, "images", None)
    return isinstance(images, torch.Tensor) and getattr(dataset, "native", None) == dataset.resolution


def _batches(dataset: ImageDataset, loader, batch_size: int):
    """DataLoader batches, or plain slices of an in-memory tensor (same values, no per-item calls)."""
    if loader is not None:
        yield from loader
        return
    images = dataset.images
    for i in range(0, len(dataset), batch_size):
        x = images[i:i + batch_size]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        yield dataset.ids[i:i + batch_size], x, dataset.labels[i:i + batch_size]
