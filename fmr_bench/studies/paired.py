"""Two FMR runs on the same images, compared image by image (``fmr compare RUN_A RUN_B``).

The difference A − B of each headline metric (SA, VR, PA, FMR, PA_all, oracle accuracy, mean
steps, and the audited figures when both runs were audited by the same judge) with a paired
percentile-bootstrap interval (image ids resampled jointly, so what the two runs share about an
image cancels) and a two-sided sign-flip permutation p-value:
:func:`fmr_bench.metrics.intervals.paired_difference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..metrics.fmr import outcome_indicators
from ..metrics.intervals import IntervalSettings, PairedDifference, fmr_from_sums, paired_difference
from ..results.rundir import FmrResult

#: Metrics compared, in table order.
METRICS = ("sa", "vr", "pa", "fmr", "pa_all", "oracle_acc", "mean_steps")
AUDIT_METRICS = ("audit_validity", "audit_pa", "audit_fmr", "audit_failures_confirmed")
COLUMNS = ("metric", "a", "b", "delta", "lo", "hi", "p_value", "n")


@dataclass
class Comparison:
    """The paired difference of two runs, and what they are."""

    a: str
    b: str
    judge: str | None
    result: PairedDifference

    def rows(self) -> list[dict[str, Any]]:
        r = self.result
        names = [m for m in (*METRICS, *AUDIT_METRICS) if m in r.delta]
        return [{"metric": m, "a": r.a[m], "b": r.b[m], "delta": r.delta[m],
                 "lo": (r.interval[m] or [None, None])[0], "hi": (r.interval[m] or [None, None])[1],
                 "p_value": r.p_value[m], "n": r.n} for m in names]

    def to_dict(self) -> dict[str, Any]:
        return {"run_a": self.a, "run_b": self.b, "judge": self.judge, "n": self.result.n,
                "method": self.result.method(), "rows": self.rows()}


def _judge(run: FmrResult) -> str | None:
    return ((run.record.get("audit") or {}).get("judge") or {}).get("spec")


def _indicators(run: FmrResult, ids: Sequence[str], judge: str | None) -> np.ndarray:
    by_id = {o.id: o for o in run.outcomes}
    return outcome_indicators([by_id[i] for i in ids], judge)


def same_samples(a: FmrResult, b: FmrResult) -> str | None:
    """Why two runs are not on the same sample set (fingerprint, then the ids of samples.jsonl), or None."""
    fa, fb = a.record["dataset"].get("fingerprint"), b.record["dataset"].get("fingerprint")
    if fa and fb and fa != fb:
        return f"dataset fingerprints differ ({fa} vs {fb})"
    ia, ib = {o.id for o in a.outcomes}, {o.id for o in b.outcomes}
    if ia != ib:
        return f"{len(ia - ib)} sample id(s) only in A and {len(ib - ia)} only in B"
    la, lb = {o.id: o.label for o in a.outcomes}, {o.id: o.label for o in b.outcomes}
    if la != lb:
        return "the same ids carry different labels"
    return None


def compare_results(a: FmrResult, b: FmrResult, name_a: str, name_b: str,
                    settings: IntervalSettings | None = None) -> Comparison:
    """The paired difference A − B of two loaded FMR results on the same images (audited figures when the same
    judge audited both).

    Raises:
        DataError: runs on different sample sets (``name_a``/``name_b`` name them in the message).
    """
    why = same_samples(a, b)
    if why:
        raise DataError(f"{name_a} and {name_b} are not on the same images ({why}); compare runs made with the same "
                        "--data, --limit and --seed")
    ids = sorted(o.id for o in a.outcomes)
    judge = _judge(a) if _judge(a) and _judge(a) == _judge(b) else None
    n = len(ids)
    result = paired_difference(_indicators(a, ids, judge), _indicators(b, ids, judge),
                               lambda s: fmr_from_sums(s, n, audited=judge is not None), settings)
    return Comparison(name_a, name_b, judge, result)


def compare_runs(run_a: str | Path, run_b: str | Path, settings: IntervalSettings | None = None) -> Comparison:
    """The paired difference A − B of two finished FMR runs on the same images.

    Raises:
        DataError: a folder that holds no finished FMR run, or runs on different sample sets.
    """
    a, b = FmrResult.load(run_a), FmrResult.load(run_b)
    for path, run in ((run_a, a), (run_b, b)):
        if run.record.get("kind") != "fmr":
            raise DataError(f"{path} is a {run.record.get('kind')} run; fmr compare takes two FMR run folders")
        if not run.outcomes:
            raise DataError(f"{path} holds no samples.jsonl outcomes; re-run its command to rewrite them")
    return compare_results(a, b, str(run_a), str(run_b), settings)


#: The metrics whose paired difference the studies' rows carry (sweep, compare-generators, transfer).
DELTA_METRICS = ("pa", "fmr")
#: Their columns: ``<metric>_delta``, its interval ``_lo``/``_hi`` and the sign-flip p-value ``_p``.
DELTA_COLUMNS = tuple(f"{m}_delta{end}" for m in DELTA_METRICS for end in ("", "_lo", "_hi", "_p"))


def delta_row(result: PairedDifference | None, metrics: Sequence[str] = DELTA_METRICS) -> dict[str, Any]:
    """A paired difference as a study row's columns (:data:`DELTA_COLUMNS`; all empty for ``None``)."""
    row: dict[str, Any] = {}
    for m in metrics:
        iv = (result.interval.get(m) if result else None) or (None, None)
        row.update({f"{m}_delta": result.delta.get(m) if result else None, f"{m}_delta_lo": iv[0],
                    f"{m}_delta_hi": iv[1], f"{m}_delta_p": result.p_value.get(m) if result else None})
    return row


def settled(row: dict[str, Any], metric: str = "fmr") -> int | None:
    """+1 / −1 when the paired interval of ``metric`` lies above / below 0, 0 when it holds 0, None without one."""
    lo, hi = row.get(f"{metric}_delta_lo"), row.get(f"{metric}_delta_hi")
    if lo is None or hi is None:
        return None
    return 1 if lo > 0 else -1 if hi < 0 else 0


__all__ = ["COLUMNS", "DELTA_COLUMNS", "DELTA_METRICS", "Comparison", "compare_results", "compare_runs", "delta_row",
           "same_samples", "settled"]
