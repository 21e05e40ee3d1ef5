"""Pure functional kernels of the static evaluators (numpy / torch in, floats out).

Each kernel is tested against an independent implementation on random inputs
(scikit-learn for ranking metrics, torchmetrics for calibration error).

Conventions:
    * OOD detection: in-distribution (ID) is the positive class and a higher score means
      "more in-distribution"; FPR@95 is the share of OOD samples accepted at the threshold
      that accepts 95 % of ID samples (the MCM convention; OpenOOD is ID-positive at its
      v1.5 tag and OOD-positive from August 2023 on). :data:`OOD_CONVENTION` is written
      into every record, with the threshold rule (:data:`FPR_RULES`).
    * ECE: top-label confidence, ``n_bins`` equal-width bins with intervals (lo, hi].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

OOD_CONVENTION = {
    "positive": "in-distribution",
    "score": "higher = more in-distribution",
    "fpr_at_95": "share of OOD samples with score >= the threshold that accepts 95% of ID samples (MCM convention); "
                 "threshold rule: see fpr_rule",
    "aupr_in": "average precision with ID as positive",
    "aupr_out": "average precision with OOD as positive and the score negated",
}
ECE_CONVENTION = "top-label confidence, 15 equal-width bins, intervals (lo, hi]"


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# --- accuracy ---------------------------------------------------------------------------------

def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * (logits.argmax(-1) == labels).double().mean().item()


# The two kernels live with the projections that use them (datasets never import evaluators).
from ..datasets.projection import max_project, restrict_to_subset  # noqa: E402,F401


# --- calibration ------------------------------------------------------------------------------

def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (top-label), equal-width bins with intervals (lo, hi].

    Args:
        probs: (N, C) probabilities.
        labels: (N,) true class indices.
    """
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    # Bin b holds confidences in (b/n, (b+1)/n]; confidence 0 goes to the first bin.
    bins = (torch.ceil(conf * n_bins) - 1).clamp(0, n_bins - 1).long()
    n = len(labels)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        k = int(m.sum())
        if k:
            total += k / n * abs(conf[m].mean().item() - correct[m].mean().item())
    return total


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[dict]:
    """Per-bin count, mean confidence and accuracy (for reliability diagrams)."""
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    bins = (torch.ceil(conf * n_bins) - 1).clamp(0, n_bins - 1).long()
    rows = []
    for b in range(n_bins):
        m = bins == b
        k = int(m.sum())
        rows.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": k,
                     "confidence": conf[m].mean().item() if k else None,
                     "accuracy": correct[m].mean().item() if k else None})
    return rows


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    return F.cross_entropy(logits.double() / temperature, labels.long()).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)``, fitted with LBFGS.

    Optimises log T, so T stays positive; starts at T = 1.
    """
    logits, labels = logits.detach().double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp().item())


# --- OOD detection ----------------------------------------------------------------------------

def msp(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(-1).max(-1).values


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().max(-1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (higher = more ID)."""
    return temperature * torch.logsumexp(logits.double() / temperature, -1)


def mcm(cosines: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum concept matching: ``max softmax(cos / T)`` over the class prompts."""
    return (cosines.double() / temperature).softmax(-1).max(-1).values


def _scores_labels(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    s_id, s_ood = _np(id_scores).ravel(), _np(ood_scores).ravel()
    return np.concatenate([s_id, s_ood]), np.concatenate([np.ones(len(s_id)), np.zeros(len(s_ood))])


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive; ties count one half (Mann-Whitney U)."""
    s, y = _scores_labels(id_scores, ood_scores)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(s: np.ndarray, y: np.ndarray) -> float:
    """Step-wise average precision, thresholds at each distinct score (as scikit-learn)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(id_scores, ood_scores) -> float:
    s, y = _scores_labels(id_scores, ood_scores)
    return _average_precision(s, y)


def aupr_out(id_scores, ood_scores) -> float:
    s, y = _scores_labels(id_scores, ood_scores)
    return _average_precision(-s, 1 - y)


#: FPR@95 threshold rules (``--option fpr_rule=``): where between the k-th and (k+1)-th highest ID
#: score the threshold sits, k = ceil(0.95 * n_id).
FPR_RULES = {
    "top": "threshold at the k-th highest ID score (the top of the gap to the (k+1)-th), k = ceil(0.95 n_ID); "
           "as the first point of scikit-learn's roc_curve with TPR >= 0.95",
    "mcm": "the ROC point (thresholds at every distinct score) whose TPR is closest to 0.95, the lowest "
           "threshold among equals (the bottom of the gap): the rule of the MCM paper's code "
           "(fpr_and_fdr_at_recall of Hendrycks et al.'s outlier-exposure code)",
}


def fpr_at_95(id_scores, ood_scores, tpr: float = 0.95, rule: str = "top") -> float:
    """Share of OOD samples accepted at the threshold that accepts ``tpr`` of ID samples.

    Args:
        rule: ``"top"`` (default): the threshold is the ``(1 - tpr)`` quantile of the ID scores taken
            as an order statistic, the largest t such that at least ``tpr`` of ID scores are >= t.
            ``"mcm"``: the rule of the MCM paper's evaluation code (see :data:`FPR_RULES`); it
            counts every OOD score above the next lower score, so it can be larger by up to
            the share of OOD samples inside that gap (about 2 points at 100 ID samples).
    """
    if rule == "mcm":
        return _fpr_closest_recall(_np(id_scores).ravel(), _np(ood_scores).ravel(), tpr)
    if rule != "top":
        raise ValueError(f"unknown FPR rule {rule!r}; use one of {', '.join(FPR_RULES)}")
    s_id, s_ood = np.sort(_np(id_scores).ravel()), _np(ood_scores).ravel()
    k = int(math.ceil(tpr * len(s_id)))  # how many ID samples must be accepted
    threshold = s_id[len(s_id) - k]
    return float((s_ood >= threshold).mean())


def _fpr_closest_recall(s_id: np.ndarray, s_ood: np.ndarray, tpr: float) -> float:
    """The MCM code's rule, written from its description: ROC points at each distinct score from the
    lowest threshold that still accepts every ID sample upwards; pick the first whose |TPR - tpr| is
    smallest; that list ends with an extra point (TPR 1, FPR 0) as the original does."""
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(len(s_id), bool), np.zeros(len(s_ood), bool)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_id = scores[order], is_id[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each distinct score
    tps = np.cumsum(is_id)[last]
    fps = (last + 1) - tps
    stop = int(np.searchsorted(tps, tps[-1]))  # first threshold accepting every ID sample
    recall = np.r_[(tps / tps[-1])[stop::-1], 1.0]
    fps = np.r_[fps[stop::-1], 0]
    return float(fps[np.argmin(np.abs(recall - tpr))] / len(s_ood))


def detection_metrics(id_scores, ood_scores, fpr_rule: str = "top") -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out, FPR@95 in percent."""
    return {"auroc": 100 * auroc(id_scores, ood_scores), "aupr_in": 100 * aupr_in(id_scores, ood_scores),
            "aupr_out": 100 * aupr_out(id_scores, ood_scores),
            "fpr_at_95": 100 * fpr_at_95(id_scores, ood_scores, rule=fpr_rule)}


# --- effective robustness ---------------------------------------------------------------------

def logit(p: float | np.ndarray) -> float | np.ndarray:
    """``log(p / (1 - p))`` of accuracies given in percent, clipped away from 0 and 100."""
    q = np.clip(np.asarray(p, dtype=np.float64) / 100.0, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def sigmoid_pct(z: float | np.ndarray) -> float | np.ndarray:
    return 100.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_baseline(id_accs: Sequence[float], ood_accs: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``logit(ood) = slope * logit(id) + intercept`` (Taori et al. 2020).

    Accuracies in percent; returns (slope, intercept).
    """
    x, y = logit(np.asarray(id_accs)), logit(np.asarray(ood_accs))
    if len(x) < 2:
        raise ValueError("a baseline line needs at least two (id, ood) points")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def effective_robustness(id_acc: float, ood_acc: float, line: tuple[float, float]) -> float:
    """OOD accuracy minus the baseline's prediction at the same ID accuracy (percent points)."""
    slope, intercept = line
    return float(ood_acc - sigmoid_pct(slope * logit(id_acc) + intercept))
