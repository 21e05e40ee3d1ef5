"""How far a metric can be trusted: confidence intervals over samples (pure numpy/scipy kernels).

Two methods, chosen per metric (the record's ``interval_method.metrics`` says which one each used):

* ``binomial``: the exact Clopper-Pearson interval of a share k/n of a fixed number of samples
  (SA, VR, PA_all, oracle accuracy; a static set's accuracy, top-5, average accuracy). No
  randomness; it covers at least ``level`` of the time.
* ``bootstrap``: the percentile bootstrap over samples, for ratios, random denominators and
  statistics that are not a share: PA (over the validated images of each resample), FMR = PA/SA
  (the ratio recomputed on each resample), mean steps, the audited figures, worst-group and
  mean-group accuracy, the OOD average, ECE, AUROC and FPR@95. Each resample draws n samples
  with replacement and recomputes the statistic; the interval is the (1-level)/2 and
  (1+level)/2 quantiles of the resampled statistics (``numpy.percentile``, linear), over the
  resamples where the statistic is defined (e.g. SA > 0 for FMR).

Resampling images is cheap here: a statistic that is a function of per-sample indicator sums
depends only on how many times each distinct per-sample *pattern* (e.g. clean correct,
validated, final correct) is drawn, and drawing n images with replacement draws those counts
from a multinomial over the patterns' shares. So :func:`pattern_counts` draws ``resamples``
multinomial count vectors — the bootstrap distribution exactly, at a cost that does not grow
with n. Statistics of continuous scores (ECE, AUROC, FPR@95) draw sample weights (how many
times each sample is drawn) in blocks (:func:`sample_weights`).

A paired comparison of two runs on the same images (:func:`paired_difference`) resamples the
image ids jointly (one pattern per image: A's outcome and B's) and tests "no difference" with a
sign-flip permutation test: under the null, A's and B's outcomes on an image are exchangeable,
so each image's pair is swapped with probability 1/2; the two-sided p-value is
``(1 + #{|Δ*| >= |Δ|}) / (1 + permutations)``.

Everything is deterministic for a given :class:`IntervalSettings` seed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Defaults of every interval fmr_bench computes (one place).
LEVEL, RESAMPLES, SEED = 0.95, 1000, 0
#: Resamples per block of sample weights (bounds the memory of :func:`sample_weights`: block x n floats).
WEIGHT_BLOCK = 64
BINOMIAL, BOOTSTRAP, BASIC = "binomial", "bootstrap", "basic-bootstrap"
METHODS = {
    BINOMIAL: "exact Clopper-Pearson interval of a share k/n of a fixed number of samples",
    BOOTSTRAP: "percentile bootstrap over samples: resample n samples with replacement, recompute the statistic "
               "(ratios from the resampled samples), quantiles (1-level)/2 and (1+level)/2 of the resampled values "
               "where the statistic is defined",
    BASIC: "hull of the percentile and the basic (reverse percentile) bootstrap intervals, clipped to the metric's "
           "range: resample as for the percentile bootstrap, q_lo and q_hi its ends, t the estimate; the interval "
           "runs from min(q_lo, 2 t - q_hi) to max(q_hi, 2 t - q_lo). For a minimum over groups (worst-group "
           "accuracy), whose resampled values fall below the estimate: the percentile interval alone misses the "
           "truth when several groups lie near the minimum, the basic one alone when one group is far below the rest",
}
PERMUTATION = ("sign-flip permutation test: each image's pair of outcomes swapped between the runs with probability "
               "1/2; two-sided p = (1 + #{|delta*| >= |delta|}) / (1 + permutations)")


PAIRED_INTERVAL = ("paired percentile bootstrap: image ids resampled jointly for both runs, the difference "
                   "recomputed on each resample")


@dataclass(frozen=True)
class IntervalSettings:
    """Level, resamples and seed of the intervals (recorded with them)."""

    level: float = LEVEL
    resamples: int = RESAMPLES
    seed: int = SEED

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"interval level must be in (0, 1), got {self.level}")
        if self.resamples < 1:
            raise ValueError(f"interval resamples must be >= 1, got {self.resamples}")

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def describe(self, metrics: Mapping[str, str]) -> dict[str, Any]:
        """The record's ``interval_method``: level, resamples, seed, the methods and which metric used which."""
        used = sorted(set(metrics.values()))
        return {"level": self.level, "resamples": self.resamples, "seed": self.seed,
                "methods": {m: METHODS[m] for m in used}, "metrics": dict(metrics)}


# --- kernels ----------------------------------------------------------------------------------
def clopper_pearson(k: int | np.ndarray, n: int | np.ndarray, level: float = LEVEL) -> tuple[Any, Any]:
    """Exact binomial interval of k successes in n trials, in percent (vectorised; NaN where n == 0)."""
    from scipy.stats import beta

    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    bad = n <= 0
    lo, hi = np.where(bad, np.nan, 100 * lo), np.where(bad, np.nan, 100 * hi)
    return (float(lo), float(hi)) if lo.ndim == 0 else (lo, hi)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """(lo, hi) quantiles of resampled statistics, NaNs (undefined resamples) left out; None when none is defined."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_interval(values: np.ndarray, estimate: float, level: float = LEVEL, basic: bool = False,
                       bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float] | None:
    """The percentile interval of resampled statistics, or with ``basic`` its hull with the basic bootstrap
    interval [2·estimate − hi, 2·estimate − lo], clipped to ``bounds`` (:data:`BASIC`); None when no resample
    is defined (or, with ``basic``, the estimate is not)."""
    iv = percentile_interval(values, level)
    if iv is None or not basic:
        return iv
    if not np.isfinite(estimate):
        return None
    t = float(estimate)
    lo, hi = min(iv[0], 2 * t - iv[1]), max(iv[1], 2 * t - iv[0])
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def pattern_counts(patterns: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap resamples of n samples as counts of their distinct patterns.

    Args:
        patterns: (n, k) per-sample values (any numbers); samples with equal rows are interchangeable.

    Returns:
        (unique rows (U, k), counts (resamples, U)): each count row sums to n and is a draw from the
        multinomial that drawing n samples with replacement gives.
    """
    uniq, base = distinct_patterns(patterns)
    return uniq, rng.multinomial(int(base.sum()), base / base.sum(), size=resamples)


def distinct_patterns(patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows (U, k), how many samples have each (U,)) of per-sample values (n, k)."""
    patterns = np.asarray(patterns)
    uniq, inverse = np.unique(patterns.reshape(len(patterns), -1), axis=0, return_inverse=True)
    return uniq, np.bincount(inverse.ravel(), minlength=len(uniq)).astype(np.int64)


def sample_weights(n: int, resamples: int, rng: np.random.Generator, block: int = WEIGHT_BLOCK) -> Iterator[np.ndarray]:
    """Bootstrap weights (how often each of n samples is drawn), ``block`` resamples at a time: (b, n) floats."""
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def _ratio(num: np.ndarray, den: np.ndarray, scale: float = 100.0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, scale * num / np.where(den > 0, den, 1), np.nan)


# --- the FMR metrics from indicator sums ------------------------------------------------------
#: Per-sample indicator columns of an FMR run, in order (see :func:`fmr_indicators`).
FMR_COLUMNS = ("clean", "validated", "val_final", "final", "oracle", "val_steps", "audited", "confirmed",
               "confirmed_final", "failures", "failures_confirmed")
#: FMR metrics whose interval is binomial (a share of all n samples); the rest are bootstrapped.
FMR_BINOMIAL = {"sa": "clean", "vr": "validated", "pa_all": "final", "oracle_acc": "oracle"}


def fmr_indicators(clean: Sequence[bool], validated: Sequence[bool], final: Sequence[bool], oracle: Sequence[bool],
                   steps: Sequence[int], judge: Sequence[bool | None] | None = None) -> np.ndarray:
    """(n, len(FMR_COLUMNS)) per-sample indicators of an FMR run (``judge``: the audit verdict or None)."""
    c, v, f, o = (np.asarray(x, dtype=bool) for x in (clean, validated, final, oracle))
    s = np.asarray(steps, dtype=np.float64)
    j = np.array([-1 if x is None else int(bool(x)) for x in judge], dtype=np.int8) if judge is not None \
        else np.full(len(c), -1, dtype=np.int8)
    audited = v & (j >= 0)
    confirmed = audited & (j == 1)
    failures = audited & ~f
    return np.stack([c, v, v & f, f, o, np.where(v, s, 0.0), audited, confirmed, confirmed & f, failures,
                     failures & (j == 1)], axis=1).astype(np.float64)


def fmr_from_sums(sums: np.ndarray, n: int, audited: bool = False) -> dict[str, np.ndarray]:
    """The FMR metrics (percent, as :func:`fmr_bench.metrics.fmr.fmr_metrics`) from indicator sums (..., columns).

    NaN where a metric is undefined (no validated sample, SA = 0...).
    """
    col = {name: sums[..., i] for i, name in enumerate(FMR_COLUMNS)}
    sa = _ratio(col["clean"], np.full_like(col["clean"], n))
    pa = _ratio(col["val_final"], col["validated"])
    out = {"sa": sa, "vr": _ratio(col["validated"], np.full_like(sa, n)), "pa": pa, "fmr": _ratio(pa, sa),
           "pa_all": _ratio(col["final"], np.full_like(sa, n)), "oracle_acc": _ratio(col["oracle"], np.full_like(sa, n)),
           "mean_steps": _ratio(col["val_steps"], col["validated"], 1.0)}
    if audited:
        apa = _ratio(col["confirmed_final"], col["confirmed"])
        out.update({"audit_validity": _ratio(col["confirmed"], col["audited"]), "audit_pa": apa,
                    "audit_fmr": _ratio(apa, sa),
                    "audit_failures_confirmed": _ratio(col["failures_confirmed"], col["failures"])})
    return out


def fmr_intervals(indicators: np.ndarray, settings: IntervalSettings | None = None,
                  audited: bool = False) -> tuple[dict[str, list[float] | None], dict[str, str]]:
    """Intervals of the FMR metrics of one run from its per-sample indicators (:func:`fmr_indicators`).

    Returns:
        ({metric: [lo, hi] or None}, {metric: method}).
    """
    settings = settings or IntervalSettings()
    x = np.asarray(indicators, dtype=np.float64)
    n = len(x)
    out: dict[str, list[float] | None] = {}
    methods: dict[str, str] = {}
    if n == 0:
        return out, methods
    uniq, counts = pattern_counts(x, settings.resamples, settings.rng())
    boot = fmr_from_sums(counts @ uniq, n, audited)
    for name, values in boot.items():
        if name in FMR_BINOMIAL:
            k = x[:, FMR_COLUMNS.index(FMR_BINOMIAL[name])].sum()
            out[name] = list(clopper_pearson(k, n, settings.level))
            methods[name] = BINOMIAL
        else:
            iv = percentile_interval(values, settings.level)
            out[name] = list(iv) if iv else None
            methods[name] = BOOTSTRAP
    return out, methods


# --- paired comparison ------------------------------------------------------------------------
@dataclass
class PairedDifference:
    """A − B per metric on the same samples, with its paired-bootstrap interval and sign-flip p-value."""

    a: dict[str, float | None]
    b: dict[str, float | None]
    delta: dict[str, float | None]
    interval: dict[str, list[float] | None]
    p_value: dict[str, float | None]
    n: int
    settings: IntervalSettings = field(default_factory=IntervalSettings)

    def method(self) -> dict[str, Any]:
        return paired_method(self.settings)


def paired_method(settings: IntervalSettings) -> dict[str, Any]:
    """How a paired difference was resampled: level, resamples, seed, the interval and the p-value."""
    return {"level": settings.level, "resamples": settings.resamples, "seed": settings.seed,
            "interval": PAIRED_INTERVAL, "p_value": PERMUTATION}


def paired_difference(a: np.ndarray, b: np.ndarray, metrics: Callable[[np.ndarray], dict[str, np.ndarray]],
                      settings: IntervalSettings | None = None, basic: Collection[str] = ()) -> PairedDifference:
    """A − B of ``metrics`` on paired samples, with a paired-bootstrap interval and a sign-flip p-value.

    Args:
        a, b: (n, k) per-sample indicators of the two runs, row i of both on the same sample.
        metrics: indicator sums (..., k) -> {name: values (...)}; e.g. ``lambda s: fmr_from_sums(s, n)``.
        basic: the metrics whose interval is :data:`BASIC` (minima such as worst-group; within ±100).
    """
    settings = settings or IntervalSettings()
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    n, k = a.shape
    rng = settings.rng()
    point_a, point_b = metrics(a.sum(0)), metrics(b.sum(0))
    uniq, base = distinct_patterns(np.concatenate([a, b], axis=1))
    counts = rng.multinomial(n, base / n, size=settings.resamples)  # as pattern_counts, from one np.unique
    ua, ub = uniq[:, :k], uniq[:, k:]
    boot_a, boot_b = metrics(counts @ ua), metrics(counts @ ub)
    # sign flip: of the c images of a joint pattern, Binomial(c, 1/2) swap A's and B's outcome
    swap = rng.binomial(base, 0.5, size=(settings.resamples, len(uniq)))
    keep = base - swap
    perm_a, perm_b = metrics(keep @ ua + swap @ ub), metrics(keep @ ub + swap @ ua)
    out = PairedDifference({}, {}, {}, {}, {}, n, settings)
    for name in point_a:
        va, vb = float(point_a[name]), float(point_b[name])
        out.a[name], out.b[name] = _num(va), _num(vb)
        d = va - vb
        out.delta[name] = _num(d)
        iv = bootstrap_interval(boot_a[name] - boot_b[name], d, settings.level, name in basic, (-100.0, 100.0))
        out.interval[name] = list(iv) if iv else None
        null = perm_a[name] - perm_b[name]
        null = null[np.isfinite(null)]
        out.p_value[name] = None if not np.isfinite(d) or not len(null) else \
            float((1 + np.sum(np.abs(null) >= abs(d) - 1e-9)) / (1 + len(null)))
    return out


def _num(v: float) -> float | None:
    return v if np.isfinite(v) else None


# --- several seeds on the same samples -------------------------------------------------------
def over_seeds(metric: Callable[[np.ndarray], dict[str, np.ndarray]], k: int,
               seeds: int) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``metric`` of per-sample sums (..., k) turned into the mean over ``seeds`` blocks of k columns each."""
    def mean(sums: np.ndarray) -> dict[str, np.ndarray]:
        per = [metric(sums[..., s * k:(s + 1) * k]) for s in range(seeds)]
        return {name: np.mean([p[name] for p in per], axis=0) for name in per[0]}
    return mean


def _stack_seeds(per_seed: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    arrays = [np.asarray(x, dtype=np.float64) for x in per_seed]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("every seed needs per-sample values of the same samples, in the same order")
    return np.concatenate(arrays, axis=1), arrays[0].shape[1]


def seed_mean_intervals(per_seed: Sequence[np.ndarray], metric: Callable[[np.ndarray], dict[str, np.ndarray]],
                        settings: IntervalSettings | None = None,
                        basic: Collection[str] = ()) -> dict[str, tuple[float | None, list[float] | None]]:
    """The mean over seeds of ``metric`` with its percentile-bootstrap interval over the samples.

    Args:
        per_seed: one (n, k) per-sample array per seed (models trained with different seeds, scored on the
            same n samples): a resample draws n sample ids and uses them for every seed.
        metric: per-sample sums (..., k) -> {name: values (...)}.
        basic: the names whose interval is :data:`BASIC` (within 0-100), the others' the percentile one.

    Returns:
        {name: (mean over seeds, [lo, hi] or None)}: the interval says how far the test samples let the mean
        be trusted for these seeds; the spread between seeds is not in it.
    """
    settings = settings or IntervalSettings()
    x, k = _stack_seeds(per_seed)
    fn = over_seeds(metric, k, len(per_seed))
    point = fn(x.sum(0))
    uniq, counts = pattern_counts(x, settings.resamples, settings.rng())
    boot = fn(counts @ uniq)
    out = {}
    for name, value in point.items():
        iv = bootstrap_interval(boot[name], float(value), settings.level, name in basic, (0.0, 100.0))
        out[name] = (_num(float(value)), list(iv) if iv else None)
    return out


def paired_seed_difference(a_per_seed: Sequence[np.ndarray], b_per_seed: Sequence[np.ndarray],
                           metric: Callable[[np.ndarray], dict[str, np.ndarray]],
                           settings: IntervalSettings | None = None, basic: Collection[str] = ()) -> PairedDifference:
    """Mean over seeds of A − B (:func:`paired_difference` with seed s of A paired with seed s of B).

    A single model B against several seeds of A: pass it once per seed of A.
    """
    a, k = _stack_seeds(a_per_seed)
    b, kb = _stack_seeds(b_per_seed)
    if (len(a_per_seed), k) != (len(b_per_seed), kb):
        raise ValueError(f"A has {len(a_per_seed)} seed(s) of {k} columns, B {len(b_per_seed)} of {kb}")
    return paired_difference(a, b, over_seeds(metric, k, len(a_per_seed)), settings, basic)


def share_metric(name: str, n: int) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Sums (..., c) of c per-sample 0/1 columns -> {name: the mean of the c shares, percent} (c = 1: accuracy)."""
    return lambda sums: {name: 100.0 * np.mean(sums, axis=-1) / n}


def group_columns(correct: Sequence[bool], groups: Sequence[int], n_groups: int) -> np.ndarray:
    """(n, 2·n_groups) per-sample columns of :func:`group_metric`: one-hot group, then one-hot group if correct."""
    g = np.asarray(groups, dtype=np.int64)
    onehot = (g[:, None] == np.arange(n_groups)[None, :]).astype(np.float64)
    return np.concatenate([onehot, onehot * np.asarray(correct, dtype=np.float64)[:, None]], axis=1)


def group_metric(n_groups: int, worst: str = "worst_group_acc",
                 average: str = "avg_acc") -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Sums of :func:`group_columns` -> worst-group accuracy (over the groups with samples) and the accuracy over
    all samples, percent."""
    def metric(sums: np.ndarray) -> dict[str, np.ndarray]:
        size, right = sums[..., :n_groups], sums[..., n_groups:]
        acc = _ratio(right, size)
        with np.errstate(all="ignore"):
            low = np.min(np.where(size > 0, acc, np.inf), axis=-1)
        return {worst: np.where(np.isfinite(low), low, np.nan), average: _ratio(right.sum(-1), size.sum(-1))}
    return metric


# --- static metrics ---------------------------------------------------------------------------
def mean_of_shares(ks: Sequence[int], ns: Sequence[int], settings: IntervalSettings,
                   rng: np.random.Generator) -> tuple[float, float] | None:
    """Bootstrap interval of the mean of several sets' accuracies (percent), each set resampled on its own.

    A resample of a set of n samples with k correct has Binomial(n, k/n) correct: exactly the bootstrap.
    """
    ks, ns = np.asarray(ks, dtype=np.float64), np.asarray(ns, dtype=np.int64)
    if not len(ks) or (ns <= 0).any():
        return None
    draws = rng.binomial(ns, ks / ns, size=(settings.resamples, len(ns))) / ns
    return percentile_interval(100 * draws.mean(1), settings.level)


def group_intervals(correct: np.ndarray, groups: np.ndarray, n_groups: int, settings: IntervalSettings,
                    rng: np.random.Generator) -> dict[str, tuple[float, float] | None]:
    """Bootstrap intervals of worst-group (:data:`BASIC`) and mean-group accuracy (percentile),
    percent, resampling all samples together.

    A group that a resample leaves empty is left out of that resample's worst and mean (as an empty group is).
    """
    correct, groups = np.asarray(correct, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    uniq, counts = pattern_counts(np.stack([groups, correct], 1), settings.resamples, rng)
    onehot = (uniq[:, 0][:, None] == np.arange(n_groups)[None, :]).astype(np.float64)
    size = counts @ onehot
    right = counts @ (onehot * uniq[:, 1][:, None])
    acc = _ratio(right, size)
    with np.errstate(all="ignore"):
        worst, mean = np.nanmin(np.where(size > 0, acc, np.inf), 1), np.nanmean(acc, 1)
    have = np.bincount(groups, minlength=n_groups)[:n_groups] > 0
    sizes = np.bincount(groups, minlength=n_groups)[:n_groups]
    rights = np.bincount(groups, weights=correct, minlength=n_groups)[:n_groups]
    estimate = float(np.min(100 * rights[have] / sizes[have])) if have.any() else float("nan")
    return {"worst_group_acc": bootstrap_interval(worst, estimate, settings.level, basic=True, bounds=(0.0, 100.0)),
            "mean_group_acc": percentile_interval(mean, settings.level)}


def ece_interval(confidence: np.ndarray, correct: np.ndarray, settings: IntervalSettings, rng: np.random.Generator,
                 n_bins: int = 15) -> tuple[float, float] | None:
    """Bootstrap interval of the top-label ECE in percent (equal-width bins (lo, hi], as metrics.static.ece)."""
    conf, corr = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    n = len(conf)
    if n == 0:
        return None
    bins = np.clip(np.ceil(conf * n_bins) - 1, 0, n_bins - 1).astype(np.int64)
    gap = np.zeros((n, n_bins))
    gap[np.arange(n), bins] = conf - corr
    values = [np.abs(w @ gap).sum(1) / n for w in sample_weights(n, settings.resamples, rng)]
    return percentile_interval(100 * np.concatenate(values), settings.level)


def detection_intervals(id_scores: np.ndarray, ood_scores: np.ndarray, settings: IntervalSettings,
                        rng: np.random.Generator, tpr: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Bootstrap intervals of AUROC and FPR@95 (percent; ID positive, the ``top`` threshold rule of
    metrics.static.fpr_at_95), ID and OOD samples resampled each on their own.

    Both are drawn from their exact bootstrap distributions without materialising every resample:

    * FPR@95: the threshold is the ``ceil(tpr·n_id)``-th highest of the n_id drawn ID scores. Drawing a sample
      is ``floor(n·U)`` of a uniform U, so the k-th smallest drawn rank is ``floor(n·U_(k))`` with
      ``U_(k) ~ Beta(k, n − k + 1)``; the OOD samples drawn at or above it are Binomial(n_ood, their share).
    * AUROC: the smaller side gets full bootstrap weights (exchangeable, so drawn in sorted order); the other
      side only matters through where each of its scores falls among the first side's (the pair of its
      left and right insertion points), so its draws are counted per such bin.
    """
    s_id, s_ood = np.asarray(id_scores, dtype=np.float64).ravel(), np.asarray(ood_scores, dtype=np.float64).ravel()
    n_id, n_ood = len(s_id), len(s_ood)
    if not n_id or not n_ood:
        return {"auroc": None, "fpr_at_95": None}
    aurocs = _auroc_draws(s_id, s_ood, settings.resamples, rng)
    k = int(np.ceil(tpr * n_id))
    rank = np.floor(n_id * rng.beta(k, n_id - k + 1, size=settings.resamples)).astype(np.int64)
    threshold = np.sort(s_id)[::-1][np.minimum(rank, n_id - 1)]
    at_or_above = (n_ood - np.searchsorted(np.sort(s_ood), threshold, side="left")) / n_ood
    fprs = rng.binomial(n_ood, at_or_above) / n_ood
    return {"auroc": percentile_interval(100 * aurocs, settings.level),
            "fpr_at_95": percentile_interval(100 * fprs, settings.level)}


def _auroc_draws(s_id: np.ndarray, s_ood: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples,) bootstrap AUROCs (ties one half) of ID against OOD scores (see :func:`detection_intervals`)."""
    n_id, n_ood = len(s_id), len(s_ood)
    swap = n_id < n_ood  # full weights on the smaller side
    full, binned = (s_id, s_ood) if swap else (s_ood, s_id)
    srt = np.sort(full)
    bins, bin_of = np.unique(np.stack([np.searchsorted(srt, binned, side="left"),
                                       np.searchsorted(srt, binned, side="right")], 1), axis=0, return_inverse=True)
    bin_of = bin_of.ravel()
    out = []
    for w in sample_weights(len(full), resamples, rng):
        b = len(w)
        cum = np.concatenate([np.zeros((b, 1)), np.cumsum(w, 1)], 1)
        half = 0.5 * (cum[:, bins[:, 0]] + cum[:, bins[:, 1]])  # full-side weight below each bin, ties one half
        draws = bin_of[rng.integers(0, len(binned), size=(b, len(binned)))] + (np.arange(b) * len(bins))[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * len(bins)).reshape(b, len(bins))
        pairs = np.einsum("ij,ij->i", counts, half)  # sum over the binned side's draws
        out.append(n_id * n_ood - pairs if swap else pairs)
    return np.concatenate(out) / (n_id * n_ood)


class Intervals:
    """Collects a record's intervals and which method each used; one seeded generator for all of them."""

    def __init__(self, settings: IntervalSettings | None = None) -> None:
        self.settings = settings or IntervalSettings()
        self.rng = self.settings.rng()
        self.values: dict[str, list[float] | None] = {}
        self.methods: dict[str, str] = {}

    def put(self, name: str, interval: tuple[float, float] | list[float] | None, method: str) -> None:
        self.values[name] = None if interval is None or not np.all(np.isfinite(interval)) else \
            [float(interval[0]), float(interval[1])]
        self.methods[name] = method

    def share(self, name: str, k: int, n: int) -> None:
        """A share k/n of a fixed number of samples: Clopper-Pearson."""
        self.put(name, clopper_pearson(int(k), int(n), self.settings.level) if n else None, BINOMIAL)

    def section(self) -> dict[str, Any]:
        """The record's ``intervals`` and ``interval_method`` sections."""
        return {"intervals": dict(self.values), "interval_method": self.settings.describe(self.methods)}


__all__ = [
    "BASIC",
    "BINOMIAL",
    "BOOTSTRAP",
    "FMR_COLUMNS",
    "LEVEL",
    "RESAMPLES",
    "SEED",
    "IntervalSettings",
    "Intervals",
    "PairedDifference",
    "bootstrap_interval",
    "clopper_pearson",
    "detection_intervals",
    "distinct_patterns",
    "ece_interval",
    "fmr_from_sums",
    "fmr_indicators",
    "fmr_intervals",
    "group_columns",
    "group_intervals",
    "group_metric",
    "mean_of_shares",
    "over_seeds",
    "paired_difference",
    "paired_seed_difference",
    "pattern_counts",
    "percentile_interval",
    "sample_weights",
    "seed_mean_intervals",
    "share_metric",
]
