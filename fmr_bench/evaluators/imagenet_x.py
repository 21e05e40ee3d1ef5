"""``imagenet-x``: accuracy per factor of variation (Idrissi et al., ICLR 2023).

Annotations come from the ``imagenet-x`` package (``pip install imagenet-x``;
``imagenet_x/annotations/imagenet_x_val_{top,multi}_factor.jsonl``), joined on the
file names of an ``imagenet:PATH`` val folder (``ILSVRC2012_val_XXXXXXXX.JPEG``).
Datasets may carry their own annotations instead (``digits-shift:mixed``).

Per factor f: accuracy over images annotated with f, and error ratio
``(1 - acc_f) / (1 - acc)`` with acc the accuracy over all annotated images; the worst
factor is the one with the lowest accuracy (the package's ``worst_factor``). By default
each image has its top factor (``which_factor=top``); ``multi`` uses every active factor.
Also writes ``imagenet_x_predictions/<model>.csv`` (``file_name, predicted_class,
predicted_probability``), the format the package's own tools read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..datasets.factors import FACTORS
from ..errors import DataError, MissingDependencyError, SettingsError
from ..files import atomic_write
from ..registry import EVALUATORS
from ..metrics.intervals import Intervals
from .base import Context, Output


def load_annotations(which_factor: str = "top", filter_prototypes: bool = True):
    """The package's val annotations (one row per image, one 0/1 column per factor)."""
    try:
        import imagenet_x
    except ImportError:
        raise MissingDependencyError("imagenet-x annotations need the imagenet-x package; run: pip install imagenet-x") from None
    return imagenet_x.load_annotations(which_factor=which_factor, partition="val", filter_prototypes=filter_prototypes)


def factor_accuracies(is_correct: np.ndarray, factors: np.ndarray, names: list[str] = FACTORS) -> dict[str, float | None]:
    """Accuracy (fraction) per factor column of the 0/1 matrix ``factors`` (N, F), plus
    ``average`` over all rows and ``worst_factor`` (min over factors with samples)."""
    is_correct = np.asarray(is_correct, dtype=bool)
    factors = np.asarray(factors, dtype=bool)
    out: dict[str, float | None] = {}
    for j, name in enumerate(names):
        m = factors[:, j]
        out[name] = float(is_correct[m].mean()) if m.any() else None
    present = [v for v in out.values() if v is not None]
    out["worst_factor"] = min(present) if present else None
    out["average"] = float(is_correct.mean())
    return out


def error_ratios(accs: dict[str, float | None], names: list[str] = FACTORS) -> dict[str, float | None]:
    avg = accs["average"]
    return {f: (None if accs[f] is None or avg >= 1 else (1 - accs[f]) / (1 - avg)) for f in names}


def _file_name(sample_id: str) -> str:
    return Path(sample_id).name


@EVALUATORS.register("imagenet-x", help="ImageNet-X per-factor accuracy, error ratio, worst factor")
def evaluate(ctx: Context, data, ood, which_factor: str = "top", filter_prototypes: bool | str = True) -> Output:
    if which_factor not in ("top", "multi"):
        raise SettingsError(f"which_factor must be top or multi (got {which_factor!r})")
    if isinstance(filter_prototypes, str):
        filter_prototypes = filter_prototypes.lower() not in ("0", "false", "no")
    ds = data[0]
    own = getattr(ds, "factor_annotations", None)
    ann = own if own is not None else load_annotations(which_factor, filter_prototypes)
    cl = ctx.logits(ds)
    probs = cl.logits.double().softmax(-1)
    conf, pred = probs.max(-1)
    key = (lambda s: s) if own is not None else _file_name
    pos = {key(sid): i for i, sid in enumerate(cl.ids)}
    rows = [(r, pos[f]) for r, f in enumerate(ann["file_name"].tolist()) if f in pos]
    if not rows:
        example = cl.ids[0] if cl.ids else "-"
        raise DataError(f"none of the {len(cl.ids)} images of {ds.spec} (e.g. {example}) has an ImageNet-X "
                        "annotation; use imagenet:PATH to the ImageNet val folder (files ILSVRC2012_val_*.JPEG)")
    ann_rows = np.array([r for r, _ in rows])
    idx = np.array([i for _, i in rows])
    labels = cl.labels.numpy()[idx]
    if own is None:
        expected = ann["class"].to_numpy()[ann_rows]
        if not np.array_equal(labels, expected):
            bad = int((labels != expected).sum())
            raise DataError(f"{bad} images of {ds.spec} have labels that differ from ImageNet-X's classes; "
                            "check that the wnid folders hold the right images")
    is_correct = pred.numpy()[idx] == labels
    fac = ann[FACTORS].to_numpy()[ann_rows]
    accs = factor_accuracies(is_correct, fac)
    ratios = error_ratios(accs)
    metrics: dict = {"acc": 100 * accs["average"], "n_annotated": len(idx), "n": len(ds)}
    for f in FACTORS:
        metrics[f"{f}/acc"] = None if accs[f] is None else 100 * accs[f]
        metrics[f"{f}/error_ratio"] = ratios[f]
        metrics[f"{f}/n"] = int(fac[:, FACTORS.index(f)].sum())
    iv = Intervals()
    iv.share("acc", int(is_correct.sum()), len(idx))
    for j, f in enumerate(FACTORS):
        iv.share(f"{f}/acc", int(is_correct[fac[:, j].astype(bool)].sum()), int(fac[:, j].astype(bool).sum()))
    metrics["worst_factor_acc"] = None if accs["worst_factor"] is None else 100 * accs["worst_factor"]
    present = {f: accs[f] for f in FACTORS if accs[f] is not None}
    worst = min(present, key=present.get) if present else None
    files = {}
    if ctx.folder is not None:
        import pandas as pd

        out_dir = ctx.folder / "imagenet_x_predictions"
        stem = re.sub(r"[^A-Za-z0-9.+-]+", "-", ctx.spec.split("?")[0]).strip("-") or "model"
        frame = pd.DataFrame({"file_name": [key(s) for s in cl.ids], "predicted_class": pred.numpy(),
                              "predicted_probability": conf.numpy()})
        atomic_write(out_dir / f"{stem}.csv", frame.to_csv(index=False))
        files["predictions"] = f"imagenet_x_predictions/{stem}.csv"
    details = {"worst_factor": worst, "which_factor": which_factor,
               "annotations": "dataset" if own is not None else f"imagenet-x package (filter_prototypes={filter_prototypes})",
               "convention": {"error_ratio": "(1 - acc_factor) / (1 - acc_overall), acc over annotated images"}}
    return Output(metrics, details, files, intervals=iv)


evaluate.options = {"which_factor": "top (default) or multi", "filter_prototypes": "drop prototypical images (default true)"}
evaluate.digits_defaults = lambda data: (["digits-shift:mixed"], [])
