"""FMR metrics from per-sample outcomes (pure functions; percentages like the paper).

* SA  — accuracy of the model on the clean images, all samples.
* VR  — validation rate: share of samples whose first step the oracle accepted.
* PA  — accuracy on the final images x-hat, over validated samples.
* FMR — 100 * PA / SA.
* PA_all — accuracy over all samples, the clean image standing in for non-validated ones.
* oracle_acc — the oracle's accuracy on the clean images.
* mean_steps — mean accepted steps over validated samples.

Audited metrics (:func:`audit_metrics`), for a judge J that labelled the x-hat of validated samples:

* audit_validity — share of audited validated samples whose x-hat J labels y.
* audit_pa — accuracy of the model on x-hat over the samples J confirmed (validated, J says y).
* audit_fmr — 100 * audit_pa / SA (SA over all samples, as for FMR).
* audit_failures_confirmed — among audited samples the model gets wrong on x-hat, the share
  J labels y: the model's counted failures that the judge also sees as the true class.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from ..protocol.outcome import SampleOutcome
from .intervals import fmr_indicators


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def fmr_metrics(outcomes: Iterable[SampleOutcome]) -> dict[str, float | int | None]:
    rows = list(outcomes)
    n = len(rows)
    validated = [o for o in rows if o.validated]
    sa = _pct(sum(o.clean_correct for o in rows), n)
    pa = _pct(sum(o.final_correct for o in validated), len(validated))
    return {
        "n": n,
        "n_validated": len(validated),
        "sa": sa,
        "vr": _pct(len(validated), n),
        "pa": pa,
        "fmr": 100.0 * pa / sa if pa is not None and sa else None,
        "pa_all": _pct(sum(o.final_correct for o in rows), n),
        "oracle_acc": _pct(sum(o.oracle_clean == o.label for o in rows), n),
        "mean_steps": sum(o.steps for o in validated) / len(validated) if validated else None,
    }


def audit_counts(rows: Iterable[tuple[bool, bool, bool, bool | None]]) -> dict[str, float | int | None]:
    """Audited metrics from (clean correct, validated, final correct, judge ok or None) per sample.

    ``judge ok`` is ``None`` for a sample the judge has not seen (not validated, or not
    audited); such validated samples are counted in ``n_unaudited`` and left out.
    """
    rows = list(rows)
    n = len(rows)
    sa = _pct(sum(r[0] for r in rows), n)
    audited = [r for r in rows if r[1] and r[3] is not None]
    confirmed = [r for r in audited if r[3]]
    failures = [r for r in audited if not r[2]]
    pa = _pct(sum(r[2] for r in confirmed), len(confirmed))
    return {
        "n_audited": len(audited),
        "n_unaudited": sum(1 for r in rows if r[1] and r[3] is None),
        "n_confirmed": len(confirmed),
        "audit_validity": _pct(len(confirmed), len(audited)),
        "audit_pa": pa,
        "audit_fmr": 100.0 * pa / sa if pa is not None and sa else None,
        "audit_failures_confirmed": _pct(sum(1 for r in failures if r[3]), len(failures)),
    }


def audit_metrics(outcomes: Iterable[SampleOutcome], judge: str) -> dict[str, float | int | None]:
    """:func:`audit_counts` of run outcomes with the verdicts of ``judge`` (its spec)."""
    def ok(o: SampleOutcome) -> bool | None:
        v = o.verdict(judge) if o.validated else None
        return None if v is None else bool(v["ok"])

    return audit_counts((o.clean_correct, o.validated, o.final_correct, ok(o)) for o in outcomes)


def outcome_indicators(outcomes: Sequence[SampleOutcome], judge: str | None = None) -> np.ndarray:
    """The per-sample indicators (:func:`fmr_bench.metrics.intervals.fmr_indicators`) of outcomes, in their order
    (``judge``: the audit whose verdicts count, or None)."""
    rows = list(outcomes)
    verdicts = None
    if judge:
        verdicts = [None if not o.validated or o.verdict(judge) is None else bool(o.verdict(judge)["ok"]) for o in rows]
    return fmr_indicators([o.clean_correct for o in rows], [o.validated for o in rows], [o.final_correct for o in rows],
                          [o.oracle_clean == o.label for o in rows], [o.steps for o in rows], verdicts)


def per_class_metrics(outcomes: Iterable[SampleOutcome], class_names: Sequence[str],
                      judge: str | None = None) -> list[dict]:
    """One row of :func:`fmr_metrics` per class (and of :func:`audit_metrics` when ``judge`` is given)."""
    by_class: dict[int, list[SampleOutcome]] = defaultdict(list)
    for o in outcomes:
        by_class[o.label].append(o)
    return [{"label": c, "class": class_names[c], **fmr_metrics(by_class[c]),
             **(audit_metrics(by_class[c], judge) if judge else {})} for c in sorted(by_class)]


#: FMR = PA / SA is flagged when SA is below this multiple of chance accuracy ...
NEAR_CHANCE_FACTOR = 2.0
#: ... or when fewer than this many clean images are classified correctly.
MIN_CLEAN_CORRECT = 10


def fmr_warnings(metrics: dict, num_classes: int) -> list[str]:
    """Why the FMR ratio of a run may mislead, as lines for the console and the record.

    FMR divides PA by SA; when SA is near chance (below ``NEAR_CHANCE_FACTOR`` x 100/C %)
    or rests on fewer than ``MIN_CLEAN_CORRECT`` correctly classified clean images, the
    ratio says little about robustness (an untrained net can score FMR 100).
    """
    out = []
    sa, n = metrics.get("sa"), metrics.get("n") or 0
    if sa is None or not num_classes:
        return out
    chance = 100.0 / num_classes
    n_correct = round(sa * n / 100.0)
    if sa < NEAR_CHANCE_FACTOR * chance:
        out.append(f"SA {sa:.2f} % is near chance ({chance:.2f} % for {num_classes} classes): FMR = PA/SA is not "
                   "meaningful for this model")
    if n_correct < MIN_CLEAN_CORRECT:
        out.append(f"only {n_correct} clean image(s) classified correctly: FMR rests on too few samples; "
                   "evaluate more images")
    return out
