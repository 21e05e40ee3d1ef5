"""Every task a run can be, in one registry: the FMR protocol is a task like ``ood-accuracy``.

A :class:`Task` says what kind of record it writes and how to run it — on a spec, into a run
folder (:meth:`Task.run`: ``fmr evaluate``, ``fmr leaderboard run``) or on an in-memory model
with nothing written (:meth:`Task.score`: the fine-tuning evaluation callback). Code that
runs "whatever the user named" looks the task up here and never compares task names::

    for name in names:
        TASKS.get(name).score(clf, data, ood, limit=64, budget=10, seed=0, device="cpu")

The static evaluators are registered here as they are in :data:`~fmr_bench.registry.EVALUATORS`
(one file each in this package); ``fmr`` runs :func:`fmr_bench.engine.fmr.evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..registry import EVALUATORS, Registry
from ..results.record import KIND_FMR, KIND_STATIC

TASKS: Registry = Registry("evaluator")  # named as the flag that picks tasks: --evaluator


@dataclass(frozen=True)
class Task:
    """One task: its name, the kind of record it writes, and how to run it."""

    name: str
    kind: str
    help: str = ""

    @property
    def takes_subset(self) -> bool:
        """Whether a seeded ``limit`` of images and a step ``budget`` apply (the FMR protocol's)."""
        return self.kind == KIND_FMR

    def run(self, model: Any, data: Any, ood: Sequence[Any] | None = None, *, out: Any = "runs",
            options: dict[str, Any] | None = None, grid: bool = True, progress: bool = False, **settings: Any) -> Any:
        """Run on ``model`` (a spec or module) into ``out``; returns the result object. ``grid``: whether
        a task that draws images (the FMR protocol's ``grid.png``) draws them; ``progress``: show the
        run's progress (:mod:`fmr_bench.progress`: a bar, or plain lines in a log)."""
        if self.takes_subset:
            from ..engine.fmr import evaluate

            return evaluate(model, data, out=out, write_grid=grid, progress=progress, **settings)
        from ..progress import dataset_passes
        from .base import run_evaluator

        return run_evaluator(model, self.name, data, list(ood or []) or None, out=out,
                             progress=dataset_passes() if progress else None, **settings, **(options or {}))

    def score(self, clf: Any, data: Any, ood: Sequence[Any] = (), *, limit: int | None = None,
              budget: int | None = None, seed: int = 0, device: str = "auto", **options: Any) -> dict[str, Any]:
        """Metrics of the in-memory model ``clf``, nothing written; ``limit``/``budget`` for subset tasks."""
        if self.takes_subset:
            kw = {k: v for k, v in (("limit", limit), ("budget", budget)) if v is not None}
            res = self.run(clf, data, out=None, seed=seed, grid=False, device=device, **kw, **options)
        else:
            res = self.run(clf, data, ood, out=None, options=options, device=device, cache=False)
        return dict(res.metrics)


TASKS.register("fmr", Task("fmr", KIND_FMR, "the dynamic FMR protocol (default of fmr evaluate)"),
               help="the dynamic FMR protocol (default of fmr evaluate)")


def _register_static() -> None:
    for entry in EVALUATORS.items():  # loads the evaluator modules (the registry's providers)
        if entry.name not in TASKS:
            TASKS.register(entry.name, Task(entry.name, KIND_STATIC, entry.help), help=entry.help)


_register_static()

__all__ = ["TASKS", "Task"]
