"""Batched inference over a dataset, with an on-disk logits cache.

Each model is fed its own eval transform (:class:`~fmr_bench.models.transform.EvalTransform`:
input size, crop, interpolation, mean/std), applied when the dataset decodes its images
(``feed="eval"``, the static evaluators), or the dataset's pixels at its current resolution,
resized by the model itself as in the FMR loop (``feed="protocol"``).

One forward pass over a dataset serves every static evaluator: logits are stored under
``$FMR_CACHE/logits/<key>.pt``, keyed by a hash of everything that determines them
(model spec, weights hash, eval transform and mean/std, dataset spec, sample ids and
labels, dataset crop). A second evaluator on the same model and data therefore costs
only its metric.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..datasets.base import ImageDataset
from ..errors import OutputError, SettingsError
from ..files import cache_dir, save_torch
from ..models import EvalTransform, ImageClassifier
from .distributed import World

CACHE_VERSION = 2  # 2: static inference through each model's eval transform
FEEDS = ("eval", "protocol")


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
    transform: dict | None = None  # the eval transform applied (EvalTransform.to_dict()), None: protocol feed
    resolution: int | None = None  # protocol feed: the dataset resolution the model resized from

    @property
    def images_per_s(self) -> float | None:
        return len(self.ids) / self.seconds if self.seconds > 0 and not self.cached else None


def logits_cache_root() -> Path:
    return Path(os.environ.get("FMR_LOGITS_CACHE", cache_dir() / "logits")).expanduser()


def feed_transform(model: ImageClassifier, dataset: ImageDataset, feed: str = "eval") -> EvalTransform | None:
    """The transform ``dataset`` applies for ``model`` (``None``: its pixels at its resolution).

    Args:
        feed: ``"eval"``, the model's own eval transform (possibly with the dataset's crop,
            see :meth:`ImageDataset.eval_transform`); ``"protocol"``, none (the FMR loop's view).
    """
    if feed not in FEEDS:
        raise SettingsError(f"feed {feed!r} is unknown; use one of {', '.join(FEEDS)}")
    return dataset.eval_transform(model.preprocess) if feed == "eval" else None


def dataset_fingerprint(dataset: ImageDataset) -> dict:
    h = hashlib.sha256()
    for sid, label in zip(dataset.ids, dataset.labels):
        h.update(f"{sid}\t{label}\n".encode())
    return {"spec": dataset.spec, "n": len(dataset), "samples_sha256": h.hexdigest()[:16],
            "crop_pct": getattr(dataset, "crop_pct", None), "border": getattr(dataset, "border", 0),
            "root": str(getattr(dataset, "root", "")), "transform": getattr(dataset, "transform_id", None)}


def logits_key(model: ImageClassifier, dataset: ImageDataset, transform: EvalTransform | None,
               weights_hash: str | None = None) -> str:
    """Hash of everything that determines the logits of ``model`` on ``dataset`` fed through ``transform``."""
    desc = {"v": CACHE_VERSION, "model": model.spec, "arch": model.arch, "weights": weights_hash or model.weights_hash(),
            "preprocess": model.preprocess.key(), "transform": transform.key() if transform is not None else None,
            "resolution": dataset.resolution if transform is None else None, "dataset": dataset_fingerprint(dataset)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def default_workers(dataset: ImageDataset) -> int:
    if getattr(dataset, "images", None) is not None:
        return 0  # in memory: worker processes only add overhead
    return max(1, min(8, os.cpu_count() or 1))


@torch.inference_mode()
def compute_logits(model: ImageClassifier, dataset: ImageDataset, *, batch_size: int = 64,
                   num_workers: int | None = None, device: str | torch.device = "cpu", cache: bool = True,
                   weights_hash: str | None = None, progress: Callable[[int, int], None] | None = None,
                   feed: str = "eval", world: World | None = None) -> Logits:
    """Logits of ``model`` on every sample of ``dataset`` (read from the cache when there).

    Args:
        model: the classifier (put in eval mode here).
        dataset: any :class:`ImageDataset`.
        batch_size: images per forward pass.
        num_workers: DataLoader workers; default all cores for file datasets, 0 in memory.
        cache: read and write the on-disk cache.
        weights_hash: the model's weights hash if already computed.
        feed: ``"eval"`` (static evaluators): images are decoded through the model's own eval
            transform; ``"protocol"``: the dataset's pixels at its current resolution, resized by
            the model as in the FMR loop (studies that compare with FMR runs).
        world: under torchrun, this rank's place: each rank runs its shard of the samples
            (:mod:`fmr_bench.results.shards`), and every rank gets the whole set's logits back in
            dataset order. Only the whole set's logits are cached (by rank 0), never a shard's.

    Raises:
        OutputError: the disk is full while the cache entry is written.
    """
    transform = feed_transform(model, dataset, feed)
    if transform is None and dataset.resolution is None:
        dataset.set_resolution(int(model.preprocess.input_size[0]))
    whash = weights_hash or model.weights_hash()
    key = logits_key(model, dataset, transform, whash)
    fed = {"transform": transform.to_dict() if transform is not None else None,
           "resolution": dataset.resolution if transform is None else None}
    path = logits_cache_root() / f"{key}.pt"
    hit = _read_cache(path, key, fed) if cache else None
    if world is not None:
        from .distributed import all_gather

        # every rank takes the same road: a cache that only some ranks see is recomputed by all
        if all(all_gather(hit is not None, world)):
            return hit
    elif hit is not None:
        return hit
    positions = list(range(len(dataset))) if world is None else world.shard.take(range(len(dataset)))
    logits, lab, seconds = _forward(model, dataset, transform, positions, batch_size=batch_size,
                                    num_workers=num_workers, device=torch.device(device), progress=progress)
    if world is not None:
        logits, lab, seconds = _assemble(all_gather((logits, lab, seconds), world), len(dataset))
    ids = list(dataset.ids)
    if cache and len(ids) and (world is None or world.is_root):  # only the whole set is cached, once
        _write_cache(path, {"logits": logits, "labels": lab, "ids": ids})
    return Logits(logits, lab, ids, key, cached=False, seconds=seconds, **fed)


def _forward(model: ImageClassifier, dataset: ImageDataset, transform: EvalTransform | None, positions: list[int],
             *, batch_size: int, num_workers: int | None, device: torch.device,
             progress: Callable[[int, int], None] | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(logits, labels, seconds) of ``model`` on the samples at ``positions``, in that order."""
    model = model.to(device).eval()
    workers = default_workers(dataset) if num_workers is None else num_workers
    loader = None if _in_memory(dataset, transform) else torch.utils.data.DataLoader(
        torch.utils.data.Subset(_Feed(dataset, transform), positions), batch_size=batch_size, shuffle=False,
        num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None)
    outs, labels = [], []
    start = time.perf_counter()
    done = 0
    for batch_ids, images, batch_labels in _batches(dataset, loader, batch_size, positions):
        x = images.to(device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().cpu())
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
        done += len(batch_ids)
        if progress:
            progress(done, len(positions))
    seconds = time.perf_counter() - start
    logits = torch.cat(outs) if outs else torch.empty(0, 0)
    lab = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return logits, lab, seconds


def _read_cache(path: Path, key: str, fed: dict) -> Logits | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return Logits(blob["logits"], blob["labels"], list(blob["ids"]), key, cached=True, **fed)
    except Exception:  # noqa: BLE001  (a torn or foreign file: recompute, and replace it if we may)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    return None


def _assemble(pieces: list[tuple[torch.Tensor, torch.Tensor, float]], n: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      float]:
    """The whole set's logits from every rank's shard (rank r holds positions r, r + W, ...), in dataset order."""
    from ..results.shards import Shard

    width = max((lg.shape[-1] for lg, _, _ in pieces if lg.numel()), default=0)
    logits = torch.empty(n, width)
    labels = torch.empty(n, dtype=torch.long)
    for r, (lg, lb, _) in enumerate(pieces):
        pos = torch.tensor(Shard(r, len(pieces)).take(range(n)), dtype=torch.long)
        if len(pos):
            logits[pos], labels[pos] = lg, lb
    return logits, labels, max(s for _, _, s in pieces)  # the job took as long as its slowest rank


def _write_cache(path: Path, blob: dict) -> None:
    """Write one cache entry atomically.

    A full disk stops the run with the one-line disk-full error: the record written next
    would fail the same way, and re-running resumes. A cache that cannot be written for any
    other reason (a read-only or foreign ``$FMR_LOGITS_CACHE``) is a warning only: the cache
    saves time, never results, so the run goes on without it.
    """
    try:
        save_torch(blob, path)
    except OutputError as e:
        if e.disk_full:
            raise
        warnings.warn(f"logits cache {path.parent} is not writable ({e}); going on without it "
                      "(set FMR_LOGITS_CACHE to a writable folder, or --no-cache)", RuntimeWarning, stacklevel=3)


class _Feed(torch.utils.data.Dataset):
    """``(id, image, label)`` of a dataset, each image through ``transform`` (see :func:`feed_transform`)."""

    def __init__(self, dataset: ImageDataset, transform: EvalTransform | None) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, int]:
        return self.dataset.ids[i], self.dataset.load_eval(i, self.transform), self.dataset.labels[i]


def _in_memory(dataset: ImageDataset, transform: EvalTransform | None) -> bool:
    """In-memory images that reach the model unchanged: slice them instead of a DataLoader."""
    images = getattr(dataset, "images", None)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return False
    if transform is None:
        return getattr(dataset, "native", None) == dataset.resolution
    return transform.is_identity_for(int(images.shape[-2]), int(images.shape[-1]))


def _batches(dataset: ImageDataset, loader, batch_size: int, positions: list[int]):
    """DataLoader batches, or plain slices of an in-memory tensor (same values as the transform, no per-item calls)."""
    if loader is not None:
        yield from loader
        return
    images = dataset.images
    every = len(positions) == len(dataset)
    for i in range(0, len(positions), batch_size):
        rows = positions[i:i + batch_size]
        x = images[i:i + batch_size] if every else images[torch.tensor(rows, dtype=torch.long)]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        yield [dataset.ids[j] for j in rows], x, [dataset.labels[j] for j in rows]
