"""Transferability of generated images (FMR paper App. D, F, G): images made for A, scored by B.

For each source model A, one FMR run generates images (exported as a static benchmark,
:mod:`.export`; an existing run and export with the same settings are reused). Every scored
model M (the sources included) is then scored on

* the clean images of the run's samples: ``SA(M)``, over all selected samples;
* A's validated perturbed images: ``PA(A, M)``, over the samples A's run validated;

and ``FMR(A, M) = 100 * PA(A, M) / SA(M)``. Predictions are argmax over all of M's outputs,
compared with the output that stands for the true class, as in the run. The diagonal
(M = A) is A's normal FMR run: its cells are that run's own SA/PA/FMR; the score of A on its
exported PNGs is kept beside them (``pa_export``) as a check of the export (8-bit rounding
can flip a borderline prediction).

Each cell carries the 95 % bootstrap interval of its PA and FMR over the clean images. A cell
whose scored model M is itself a source also carries the *transfer gap*: the paired difference
``PA(A, M) − PA(M, M)`` and ``FMR(A, M) − FMR(M, M)`` over the same clean images (``pa_delta``,
``fmr_delta``, with a paired-bootstrap interval and sign-flip p-value, as ``fmr compare``). A
gap above 0 means A's images fool M less than M's own run does; an interval holding 0 means the
images transfer as well as M's own, as far as this sample tells.

Output folder (``to``): ``transfer.json`` (matrices and cells), ``transfer.csv`` (one row
per cell), ``sa_matrix.csv`` / ``pa_matrix.csv`` / ``fmr_matrix.csv`` (rows source, columns
scored model). The exports live under ``OUT/exports/`` (named by a hash of what determines
their images), so later transfers with other scored models reuse them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import FmrSettings
from ..datasets import ImageDataset, load_dataset
from ..engine.logits import compute_logits
from ..errors import SettingsError
from ..metrics.fmr import outcome_indicators
from ..metrics.intervals import (
    IntervalSettings,
    fmr_from_sums,
    fmr_indicators,
    fmr_intervals,
    paired_difference,
    paired_method,
)
from ..models import ImageClassifier, load_model, map_classes
from ..results.rundir import run_dir, write_json
from ..results.study import study_document
from .export import Export, default_export_dir, export_request, export_run, merge_settings
from .exported import read_export, subset
from .paired import DELTA_COLUMNS, delta_row
from .tables import write_csv

METRICS = ("sa", "pa", "fmr")
CELL_COLUMNS = ("source", "model", "n", "n_validated", "sa", "pa", "fmr", "pa_lo", "pa_hi", "fmr_lo", "fmr_hi",
                *DELTA_COLUMNS, "from", "pa_export")


@dataclass
class TransferResult:
    """Cells of the transfer matrix, and where they were written."""

    sources: list[str]
    models: list[str]
    cells: list[dict[str, Any]]
    path: Path | None = None
    exports: dict[str, Export] = field(default_factory=dict)

    def cell(self, source: str, model: str) -> dict[str, Any]:
        return next(c for c in self.cells if c["source"] == source and c["model"] == model)

    def matrix(self, metric: str) -> list[list[float | None]]:
        """Rows ``sources``, columns ``models``."""
        return [[self.cell(s, m)[metric] for m in self.models] for s in self.sources]

    def to_dict(self) -> dict[str, Any]:
        return {"sources": self.sources, "models": self.models,
                "matrices": {k: self.matrix(k) for k in METRICS}, "cells": self.cells}


def split_specs(text: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or a list -> unique non-empty specs, in order."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    return list(dict.fromkeys(s.strip() for s in items if s and s.strip()))


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def predictions(clf: ImageClassifier, dataset: ImageDataset, *, batch_size: int, device: torch.device,
                cache: bool = True, workers: int | None = None) -> tuple[list[int], int | None]:
    """(argmax over all outputs of ``clf`` per image of ``dataset`` at its current resolution, number of outputs).

    ``workers``: DataLoader workers (``--workers``); by default none for small sets, where starting them costs more.
    """
    if workers is None:
        workers = 0 if len(dataset) < 256 else None
    # as the FMR runs it compares with: the dataset's pixels at the generator's resolution
    out = compute_logits(clf, dataset, batch_size=batch_size, num_workers=workers, device=device, cache=cache,
                         feed="protocol")
    if not len(out.ids):
        return [], None
    return out.logits.argmax(-1).tolist(), int(out.logits.shape[-1])


def transfer(sources: str | Sequence[str], models: str | Sequence[str] | None = None,
             data: str | ImageDataset = "digits", *, to: str | Path | None = None, out: str | Path = "runs",
             generator: str | None = None, oracle: str | None = None, settings: FmrSettings | None = None,
             progress: Any = False, pretrained: bool = True, cache: bool = True, log=None,
             **overrides: Any) -> TransferResult:
    """Generate with each source model and score every model on every source's images.

    Args:
        sources: the generating model(s) A (specs, or ``"a,b"``).
        models: further scored models B, C... (the sources are always scored too).
        data, generator, oracle, out, settings, overrides, progress, pretrained: as for
            :func:`fmr_bench.evaluate` (one normal run per source under ``out``).
        to: output folder; default ``OUT/transfer__<data>__<hash of the request>``.
        cache: use the on-disk logits cache for the scoring passes.
        log: optional ``callable(str)`` for progress lines.

    Raises:
        FmrBenchError: bad input (before any work) or a failed run.
    """
    srcs, scored = split_specs(sources), split_specs(models)
    if not srcs:
        raise SettingsError("transfer needs at least one source model; pass --source SPEC or --sources A,B")
    columns = list(dict.fromkeys(srcs + scored))
    merged = merge_settings(settings, overrides)
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    _preflight(columns, pretrained)
    request = {"sources": srcs, "models": columns, "dataset": dataset.spec, "generator": generator, "oracle": oracle,
               "settings": {k: v for k, v in asdict(merged).items() if k not in ("device", "batch_size", "workers")}}
    to = Path(to) if to is not None else run_dir(out, "transfer", dataset.spec, request)
    say = log or (lambda _msg: None)
    started = _dt.datetime.now(_dt.timezone.utc)

    exports = _generate(srcs, dataset, merged, say, generator=generator, oracle=oracle, out=out, progress=progress,
                        pretrained=pretrained)
    first = exports[srcs[0]].result
    dataset.set_resolution(int(first.record["settings"]["resolution"]))
    clean = subset(dataset, [o.index for o in first.outcomes])
    perturbed = {a: read_export(e.path) for a, e in exports.items()}

    from ..runtime import resolve_device

    device = resolve_device(merged.device)
    cells, indicators = [], {}
    for m in columns:
        say(f"scoring {m}")
        cells += _score_model(m, dataset, clean, perturbed, exports, merged, device, indicators,
                              pretrained=pretrained, cache=cache)
    _transfer_gaps(cells, indicators, clean.ids, exports)
    cells.sort(key=lambda c: (srcs.index(c["source"]), columns.index(c["model"])))
    result = TransferResult(srcs, columns, cells, to, exports)
    _write(result, request, started, {a: e.result.path for a, e in exports.items()})
    return result


def _preflight(columns: Sequence[str], pretrained: bool) -> None:
    """Check every model spec, and (with ``pretrained``) that its weights are at hand, before any run."""
    from ..models import model_weight_refs
    from ..weights import preflight

    refs = [ref for m in columns for ref in model_weight_refs(m)]  # a bad spec stops before any run
    if pretrained:
        preflight(refs)  # and so do missing weights when offline


def _generate(srcs: Sequence[str], dataset: ImageDataset, merged: FmrSettings, say: Any, *,
              generator: str | None, oracle: str | None, out: str | Path, progress: Any,
              pretrained: bool) -> dict[str, Export]:
    """One FMR run and export per source model (reused when one with the same settings exists)."""
    exports: dict[str, Export] = {}
    for a in srcs:
        say(f"generating with {a}")
        where = default_export_dir(out, export_request(a, dataset, generator=generator, oracle=oracle,
                                                       settings=merged, pretrained=pretrained))
        exports[a] = export_run(a, dataset, where, generator=generator, oracle=oracle, out=out, settings=merged,
                                progress=progress, pretrained=pretrained)
    return exports


def _cell_indicators(clean: ImageDataset, clean_pred: list[int], ds: ImageDataset, pred: list[int],
                     targets: Any) -> Any:
    """A cell's per-clean-image indicators (:func:`~fmr_bench.metrics.intervals.fmr_indicators`, in ``clean``'s
    order: clean correct, validated = exported, final correct); None for an export of other images."""
    final = {sid: p == targets[y] for sid, p, y in zip(ds.ids, pred, ds.labels)}
    if not set(final) <= set(clean.ids):  # an export of other images: no pairing, no interval
        return None
    correct = [p == targets[y] for p, y in zip(clean_pred, clean.labels)]
    validated = [sid in final for sid in clean.ids]
    return fmr_indicators(correct, validated, [final.get(sid, False) for sid in clean.ids], validated,
                          [0] * len(clean.ids))


def _cell_intervals(ind: Any, seed: int) -> dict[str, float | None]:
    """95 % intervals of a cell's PA and FMR: the clean images resampled, PA over the resample's exported
    (validated) images, FMR = PA / SA recomputed on each resample (metrics.intervals)."""
    if ind is None:
        return {f"{m}_{end}": None for m in ("pa", "fmr") for end in ("lo", "hi")}
    iv, _ = fmr_intervals(ind, IntervalSettings(seed=seed))
    return {f"{m}_{end}": (iv.get(m) or (None, None))[k] for m in ("pa", "fmr") for k, end in enumerate(("lo", "hi"))}


def _transfer_gaps(cells: list[dict[str, Any]], indicators: dict[tuple[str, str], Any], ids: Sequence[str],
                   exports: dict[str, Export]) -> None:
    """Add to each cell (A, M) whose M is a source the paired difference from M's own run on the same clean
    images (empty columns on the diagonal, for a model that is not a source, or without pairing)."""
    own = {}
    for m, e in exports.items():
        by_id = {o.id: o for o in e.result.outcomes}
        if set(ids) <= set(by_id):
            own[m] = outcome_indicators([by_id[i] for i in ids])
    n = len(ids)
    for c in cells:
        a, m = c["source"], c["model"]
        mine = indicators.get((a, m))
        result = None
        if a != m and m in own and mine is not None:
            result = paired_difference(mine, own[m], lambda s: {k: v for k, v in fmr_from_sums(s, n).items()
                                                                if k in ("pa", "fmr")})
        c.update(delta_row(result))


def _score_model(m: str, dataset: ImageDataset, clean: ImageDataset, perturbed: dict[str, ImageDataset],
                 exports: dict[str, Export], merged: FmrSettings, device: torch.device,
                 indicators: dict[tuple[str, str], Any], *, pretrained: bool, cache: bool) -> list[dict[str, Any]]:
    """The cells of scored model ``m``: its SA on the clean images, its PA on each source's images (each cell's
    per-image indicators go into ``indicators`` under (source, m))."""
    torch.manual_seed(merged.seed)  # random-weight models (pretrained=False) as in the run
    clf = load_model(m, class_names=dataset.class_names, pretrained=pretrained).to(device).eval()
    clean_pred, n_out = predictions(clf, clean, batch_size=merged.batch_size, device=device, cache=cache,
                                    workers=merged.workers)
    cmap = map_classes(clf.class_names, n_out, dataset.class_names, label_space=dataset.label_space,
                       model_label_space=clf.label_space, model=clf.spec or m)
    targets = cmap.index
    sa = _pct(sum(p == targets[y] for p, y in zip(clean_pred, clean.labels)), len(clean))
    cells = []
    for a, ds in perturbed.items():
        pred, _ = predictions(clf, ds, batch_size=merged.batch_size, device=device, cache=cache,
                              workers=merged.workers)
        pa = _pct(sum(p == targets[y] for p, y in zip(pred, ds.labels)), len(ds))
        indicators[(a, m)] = ind = _cell_indicators(clean, clean_pred, ds, pred, targets)
        cell = {"source": a, "model": m, "n": len(clean), "n_validated": len(ds), "sa": sa, "pa": pa,
                "fmr": 100.0 * pa / sa if pa is not None and sa else None, "from": "export", "pa_export": None,
                **_cell_intervals(ind, merged.seed)}
        if m == a:  # the diagonal is the source's own run
            run = exports[a].result.metrics
            cell.update(sa=run["sa"], pa=run["pa"], fmr=run["fmr"], pa_export=pa, **{"from": "run"})
            own = exports[a].result.record.get("intervals") or {}  # the run's own intervals, as its record has them
            cell.update({f"{k}_{end}": (own.get(k) or (None, None))[i] for k in ("pa", "fmr")
                         for i, end in enumerate(("lo", "hi"))})
        cells.append(cell)
    del clf
    return cells


def _write(result: TransferResult, request: dict, started: _dt.datetime, runs: dict[str, Path | None]) -> None:
    to = result.path
    write_csv(to / "transfer.csv", result.cells, CELL_COLUMNS)
    for metric in METRICS:
        rows = [{"source": s, **{m: v for m, v in zip(result.models, vals)}}
                for s, vals in zip(result.sources, result.matrix(metric))]
        write_csv(to / f"{metric}_matrix.csv", rows, ["source", *result.models])
    record = study_document("transfer", request, result.cells, **result.to_dict(),
                            runs={a: str(p) if p else None for a, p in runs.items()},
                            exports={a: str(e.path) for a, e in result.exports.items()},
                            paired_method=paired_method(IntervalSettings()),
                            timestamp=started.isoformat(timespec="seconds"))
    write_json(to / "transfer.json", json.loads(json.dumps(record, default=str)))
