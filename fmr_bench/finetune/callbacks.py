"""Hooks into a training loop: before, during and after training (jina-finetuner style).

A :class:`Callback` receives the :class:`~fmr_bench.finetune.trainer.Trainer` at each
point; :class:`EvalCallback` scores the in-memory model with any fmr_bench evaluators,
FMR included, every N steps or epochs and appends one record per call.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from ..errors import SettingsError
from ..files import append_jsonl, truncate_jsonl

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class Callback:
    """Override any of the hooks; each gets the trainer (model, settings, step, epoch...)."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Trainer) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without moving the training RNGs (evaluations seed their own)."""
    import numpy as np

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(npy)


class EvalCallback(Callback):
    """Score the model being trained every ``every`` steps or epochs.

    Args:
        evaluators: names: ``fmr`` (the FMR protocol) and/or static evaluators
            (``ood-accuracy``, ``group-robustness``...; see ``fmr list evaluators``).
        data: the evaluation set (spec or dataset); for ``fmr`` its world's generator and oracle.
        ood: extra sets for static evaluators that take them.
        every, unit: how often (``"step"`` or ``"epoch"``); the last epoch is always scored.
        limit: FMR: images (a fixed seeded subset, the same at every call); static evaluators
            see the whole sets.
        budget: FMR: perturbation steps per image (shorter than the protocol's default to stay cheap).
        log: a JSONL file to append each record to (None: kept in ``self.records`` only).
        options: extra keyword options for the FMR run or the evaluators.

    Each record: ``{"step", "epoch", "evaluator", "metrics", "subset": {"limit", "budget"},
    "seconds"}``, marked as a subset so it is never mistaken for a full evaluation.
    """

    def __init__(self, evaluators: str | Sequence[str], data: Any, *, ood: Sequence[Any] = (), every: int = 1,
                 unit: str = "epoch", limit: int | None = 64, budget: int | None = 10, log: str | Path | None = None,
                 seed: int = 0, **options: Any) -> None:
        names = [e.strip() for e in (evaluators.split(",") if isinstance(evaluators, str) else evaluators) if e.strip()]
        if not names:
            raise SettingsError("give at least one evaluator, e.g. --eval fmr,ood-accuracy")
        from ..evaluators import TASKS

        for n in names:
            if n not in TASKS:
                raise SettingsError(TASKS.unknown_message(n))
        if unit not in ("step", "epoch"):
            raise SettingsError(f"eval unit must be step or epoch (got {unit!r})")
        if every < 1:
            raise SettingsError(f"eval every must be >= 1 (got {every})")
        self.names, self.data, self.ood, self.every, self.unit = names, data, list(ood), every, unit
        self.limit, self.budget, self.seed, self.options = limit, budget, seed, options
        self.log = Path(log) if log else None
        self.records: list[dict[str, Any]] = []
        self._data = None

    def _dataset(self):
        from ..datasets import load_dataset

        if self._data is None:
            self._data = self.data if not isinstance(self.data, str) else load_dataset(self.data)
        return self._data

    def on_train_start(self, trainer: Trainer) -> None:
        from ..models import map_classes

        ds, clf = self._dataset(), trainer.model
        map_classes(clf.class_names, clf.num_classes, ds.class_names, label_space=ds.label_space,
                    model_label_space=clf.label_space, model=clf.spec or "the model")  # fail before training
        if self.log is not None and trainer.global_step > 0:  # resumed: keep what the checkpoint covers
            self.records = truncate_jsonl(self.log, trainer.global_step)

    def on_step_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.unit == "step" and trainer.global_step % self.every == 0:
            self.run(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        last = trainer.is_last_epoch()
        if self.unit == "epoch" and ((trainer.epochs_done % self.every == 0) or last):
            self.run(trainer)

    def run(self, trainer: Trainer) -> list[dict[str, Any]]:
        """Score ``trainer.model`` now; returns (and appends) the new records."""
        clf = trainer.model
        with isolated_rng():
            trainer.prepare_eval()
            new = score(clf, self.names, self._dataset(), self.ood, limit=self.limit, budget=self.budget,
                        seed=self.seed, device=str(trainer.device), **self.options)
        clf.train()
        for r in new:
            r.update(step=trainer.global_step, epoch=trainer.epochs_done, stage=trainer.stage_name)
        self.records += new
        if self.log is not None:
            append_jsonl(self.log, new)
        return new


def score(clf: Any, names: Sequence[str], data: Any, ood: Sequence[Any] = (), *, limit: int | None = None,
          budget: int | None = None, seed: int = 0, device: str = "auto", **options: Any) -> list[dict[str, Any]]:
    """One record per evaluator for the in-memory model ``clf`` (nothing written to disk).

    ``fmr`` runs the FMR protocol on a fixed seeded subset of ``limit`` images with ``budget``
    steps (both recorded under ``"subset"``); static evaluators see the whole sets.
    """
    from ..evaluators import TASKS

    out = []
    for name in names:
        t0 = time.perf_counter()
        task = TASKS.get(name)
        metrics = task.score(clf, data, ood, limit=limit, budget=budget, seed=seed, device=device, **options)
        out.append({"evaluator": name, "dataset": getattr(data, "spec", str(data)), "metrics": metrics,
                    "subset": {"limit": limit, "budget": budget} if task.takes_subset else None,
                    "seconds": round(time.perf_counter() - t0, 3)})
    return out
