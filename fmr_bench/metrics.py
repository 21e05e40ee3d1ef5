"""FMR metrics from per-sample outcomes (pure functions; percentages like the paper).

* SA  — accuracy of the model on the clean images, all samples.
* VR  — validation rate: share of samples whose first step the oracle accepted.
* PA  — accuracy on the final images x-hat, over validated samples.
* FMR — 100 * PA / SA.
* PA_all — accuracy over all samples, the clean image standing in for non-validated ones.
* oracle_acc — the oracle's accuracy on the clean images.
* mean_steps — mean accepted steps over validated samples.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

from .protocol.outcome import SampleOutcome


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


def per_class_metrics(outcomes: Iterable[SampleOutcome], class_names: Sequence[str]) -> list[dict]:
    by_class: dict[int, list[SampleOutcome]] = defaultdict(list)
    for o in outcomes:
        by_class[o.label].append(o)
    return [{"label": c, "class": class_names[c], **fmr_metrics(by_class[c])} for c in sorted(by_class)]


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
