"""``ood-accuracy``: accuracy under natural distribution shifts, and effective robustness.

ID set (``--data``, e.g. ``imagenet:/val``) and shifted sets (``--ood``: ``imagenet-v2:``,
``imagenet-r:``, ``imagenet-sketch:``, ``imagenet-a:``, ``objectnet:``). ImageNet-R/A
logits are restricted to their 200 classes, ObjectNet's are max-projected from ImageNet
(see :mod:`fmr_bench.datasets.imagenet_variants`). Effective robustness (Taori et al.,
2020) is the OOD accuracy above a baseline line fitted on logit-scaled (ID, OOD)
accuracies of other models; give the baseline with ``baseline=``:

- a folder of earlier ``ood-accuracy`` records (the line is fitted on their points),
- a CSV with columns ``id_acc,ood_acc`` (percent; optional ``dataset`` column),
- or ``SLOPE,INTERCEPT`` of the logit-space line.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError, SettingsError
from ..results.record import load_record
from ..results.scan import RECORD_FILE, iter_record_files
from ..registry import EVALUATORS
from ..metrics import static as M
from ..metrics.intervals import BOOTSTRAP, Intervals, mean_of_shares
from .base import Context, Output, correct, ds_name

DIGITS_SHIFTS = ("rotated", "inverted", "noisy", "blurred", "small", "dark", "style")


def load_baseline(spec: str) -> dict[str, tuple[float, float]]:
    """Baseline lines keyed by dataset name (``"ood_avg"`` for the average)."""
    path = Path(spec).expanduser()
    if not path.exists():
        parts = spec.split(",")
        try:
            slope, intercept = (float(p) for p in parts)
        except ValueError:
            raise SettingsError(f"baseline {spec!r} is neither a file, a folder of records, nor SLOPE,INTERCEPT") from None
        return {"*": (slope, intercept)}
    points: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, x: float | None, y: float | None) -> None:
        if x is not None and y is not None:
            points.setdefault(name, ([], []))[0].append(x)
            points[name][1].append(y)

    if path.is_dir():
        for rec_path in iter_record_files([path], names=(RECORD_FILE,)):
            rec = load_record(rec_path)  # RecordError (a DataError) names a file that is not a run record
            if rec.evaluator != "ood-accuracy":
                continue
            m = rec.metrics
            add("ood_avg", m.get("id_acc"), m.get("ood_avg"))
            for k, v in m.items():
                if k.endswith("/acc") and not k.startswith("id/"):
                    add(k[:-4], m.get("id_acc"), v)
    else:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                add(row.get("dataset") or "*", float(row["id_acc"]), float(row["ood_acc"]))
    lines = {k: M.fit_baseline(*v) for k, v in points.items() if len(v[0]) >= 2}
    if not lines:
        raise DataError(f"baseline {path} holds fewer than two (id, ood) points; add more models' records")
    return lines


def _digits_defaults(data: list[str]):
    return data, [f"digits-shift:{s}" for s in DIGITS_SHIFTS]


@EVALUATORS.register("ood-accuracy", help="accuracy on ID and shifted sets, OOD average, effective robustness")
def evaluate(ctx: Context, data, ood, baseline: str | None = None) -> Output:
    if not ood:
        raise SettingsError("ood-accuracy needs shifted sets; pass --ood imagenet-r:PATH (repeatable)")
    id_set = data[0]
    id_logits = ctx.logits(id_set)
    metrics: dict[str, float | None] = {"id_acc": M.accuracy(id_logits.logits, id_logits.labels), "id/n": len(id_set)}
    iv = Intervals()
    iv.share("id_acc", correct(id_logits.logits, id_logits.labels), len(id_logits.labels))
    accs = {}
    counts: list[tuple[int, int]] = []
    hows = {id_set.spec: id_logits.how}
    for ds in ood:
        cl = ctx.logits(ds)
        hows[ds.spec] = cl.how
        name = ds_name(ds)
        accs[name] = M.accuracy(cl.logits, cl.labels)
        metrics[f"{name}/acc"] = accs[name]
        metrics[f"{name}/n"] = len(ds)
        counts.append((correct(cl.logits, cl.labels), len(cl.labels)))
        iv.share(f"{name}/acc", *counts[-1])
    metrics["ood_avg"] = sum(accs.values()) / len(accs)
    iv.put("ood_avg", mean_of_shares([k for k, _ in counts], [n for _, n in counts], iv.settings, iv.rng), BOOTSTRAP)
    details: dict = {"class_maps": hows}
    if baseline:
        lines = load_baseline(baseline)
        line = lines.get("ood_avg", lines.get("*"))
        if line is not None:
            metrics["effective_robustness"] = M.effective_robustness(metrics["id_acc"], metrics["ood_avg"], line)
        for name, acc in accs.items():
            ln = lines.get(name, lines.get("*"))
            if ln is not None:
                metrics[f"{name}/er"] = M.effective_robustness(metrics["id_acc"], acc, ln)
        details["baseline"] = {"source": baseline, "lines": {k: {"slope": s, "intercept": b} for k, (s, b) in lines.items()},
                               "scale": "logit"}
    else:
        metrics["effective_robustness"] = None
        details["baseline"] = None
    return Output(metrics, details, intervals=iv)


evaluate.options = {"baseline": "folder of ood-accuracy records, CSV id_acc,ood_acc, or SLOPE,INTERCEPT"}
evaluate.digits_defaults = _digits_defaults
